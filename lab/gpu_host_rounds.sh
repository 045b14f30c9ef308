#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02: video_e2e's host table at 32K for
# Qwen2.5-VL-7B three more times (the table moves by +-10% between runs on this host), each into its own folder.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
for r in 1 2 3; do
  mkdir -p "$OUT/r$r"; cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$OUT/r$r/"
  timeout 170 python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 32768 --host-time-only \
    --merge --warmup-visual-tokens 4096 --out "$OUT/r$r" 2>&1 | grep "^| Qwen2.5" | tail -5
  rm -f "$OUT/r$r/video_e2e-h200.png" "$OUT/r$r/video_e2e-h200.md"
done
