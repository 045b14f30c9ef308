#!/usr/bin/env bash
# One call on a lent GPU machine (carry .whl), ninth session, after gpu_pipelined.sh showed the pipelined prefill no
# faster than streaming (the decoders' 32 threads starve the thread that feeds the GPU): the decoders now run at a
# lower priority (stream.yield_cpu). The priority test on the GPU host, then Prism streamed against streamed with
# the decoder prefill pipelined in chunks of 16384, Qwen2.5-VL-7B random weights, 300 s 720p clip.
set -uo pipefail
source lab/gpu_common.sh
timeout 60 python3 -m pytest -q tests/test_stream.py -k "priority or pipelined" -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu-host-nice.log" | tail -3
wait $writer
timeout 330 python3 lab/first_token_probe.py --clip /tmp/clip300.mp4 --modes prism --chunks 16384 --repeats 2 \
  --no-in-a-row 2>&1 | grep -v Warning | tee "$OUT/first_token_probe-h200-300s-nice.jsonl"
