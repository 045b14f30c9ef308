#!/usr/bin/env bash
# Tenth session, third call (carry .whl): the parallel reader's decoders in processes (the default now) against
# threads, after the second call's timeline showed the thread that feeds the GPU 10-15x slower while 8 decoder
# threads run (the GIL). Prism mode, Qwen2.5-VL-7B random weights, 300 s 720p clip: in a row, streamed and streamed +
# pipelined chunks of 8192, each with the decoders in processes and (not warmed up separately) in threads.
set -uo pipefail
source lab/gpu_common.sh
timeout 90 python3 -m pytest -q tests/test_frames.py -p no:cacheprovider -x 2>&1 | tail -2 > "$OUT/pytest-gpu-host-frames.log" &
tests=$!
wait $writer
wait $tests
timeout 470 python3 lab/first_token_probe.py --clip /tmp/clip300.mp4 --modes prism --chunks 8192 --repeats 2 \
  --threads-ab --timeline 2>&1 | grep -v Warning \
  | tee "$OUT/first_token_probe-h200-300s-processes.jsonl" | grep -v timeline | cut -c1-330
cat "$OUT/pytest-gpu-host-frames.log"
