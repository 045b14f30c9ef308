#!/usr/bin/env bash
# Eleventh session (carry .whl): the first token of Qwen3-VL-8B (random weights) on the 300 s 720p clip with the
# pipelined stream now the default, against in a row and the stream with one decoder pass after it, Prism and dense.
set -uo pipefail
source lab/gpu_common.sh
wait $writer
timeout 540 python3 lab/first_token_probe.py --model Qwen/Qwen3-VL-8B-Instruct --clip /tmp/clip300.mp4 \
  --modes prism dense --one-pass --repeats 1 2>&1 | grep -v Warning \
  | tee "$OUT/first_token_probe-h200-300s-qwen3-pipelined.jsonl" | cut -c1-330
