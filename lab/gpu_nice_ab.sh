#!/usr/bin/env bash
# Tenth session, first call (carry .whl): the decoders' lower priority (stream.DECODE_NICE, not GPU-measured in the
# ninth session) and the pipelined decoder prefill, Prism mode, Qwen2.5-VL-7B random weights, 300 s 720p clip: in a
# row, streamed (decoders niced), streamed with the decoders at normal priority, streamed + pipelined chunks of 8192;
# one warm-up and two runs each, interleaved.
set -uo pipefail
source lab/gpu_common.sh
timeout 60 python3 -m pytest -q tests/test_stream.py -k "priority or pipelined" -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu-host-nice.log" | tail -3
wait $writer
timeout 480 python3 lab/first_token_probe.py --clip /tmp/clip300.mp4 --modes prism --chunks 8192 --repeats 2 \
  --nice-ab 2>&1 | grep -v Warning | tee "$OUT/first_token_probe-h200-300s-nice.jsonl"
