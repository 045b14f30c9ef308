#!/usr/bin/env bash
# Tenth session, second call (carry .whl): where the pipelined prefill's time goes. Prism mode, Qwen2.5-VL-7B random
# weights, 300 s 720p clip: streamed and streamed + pipelined chunks of 8192, each with the decoders niced and at normal
# priority, and in a row with the decoder in chunks of 8192; a timeline per run (frames landed, tower calls and decoder
# chunks, host and GPU seconds).
set -uo pipefail
source lab/gpu_common.sh
wait $writer
timeout 520 python3 lab/first_token_probe.py --clip /tmp/clip300.mp4 --modes prism --chunks 8192 --repeats 2 \
  --nice-ab --in-a-row-chunks --no-in-a-row --timeline 2>&1 | grep -v Warning \
  | tee "$OUT/first_token_probe-h200-300s-timeline.jsonl" | cut -c1-400
