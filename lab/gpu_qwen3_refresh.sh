#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02: video_e2e's Qwen3-VL-8B rows with prism_mm's
# defaults (fused norms) and the real-density row, merged into a copy of the committed results (host table kept).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$OUT/"
timeout 570 python3 -m benchmarks.video_e2e --models Qwen/Qwen3-VL-8B-Instruct --no-host-time --merge \
  --layer-densities benchmarks/results/fidelity-qwen2.5-coder-0.5b.json --out "$OUT" 2>&1 | grep -v "^skip" \
  | tee "$OUT/qwen3.log" | grep "^| Qwen3" | tail -16
