#!/usr/bin/env bash
# One short call on a lent GPU machine (repo root; $OUT comes back): video_e2e's host table at 32K for Qwen2.5-VL-7B
# (the current tree: select_and_attend with kept TMA descriptors), merged into a copy of the committed results.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$OUT/"
timeout 200 python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 32768 --host-time-only --merge \
  --warmup-visual-tokens 4096 --out "$OUT" 2>&1 | grep "^| Qwen2.5" | tail -5
rm -f "$OUT/video_e2e-h200.png"
