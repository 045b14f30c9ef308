#!/usr/bin/env bash
# Eleventh session, third call: the paired host table again, 20 forwards per pair, the ratio balanced over the layer
# parity (geometric mean of each two forwards), every forward's layer times kept; Qwen2.5-VL-7B, then Qwen3-VL-8B,
# each merged into its own copy of the committed results.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
for m in Qwen2.5-VL-7B-Instruct Qwen3-VL-8B-Instruct; do
  mkdir -p "$OUT/$m"
  cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$OUT/$m/"
  timeout ${1:-300} python3 -m benchmarks.video_e2e --models Qwen/$m --tokens 32768 --host-time-only --merge \
    --warmup-visual-tokens 4096 --pair-forwards 20 --out "$OUT/$m" > "$OUT/$m/log.txt" 2>&1
  echo "$m rc=$?"
  grep "^| Qwen" "$OUT/$m/video_e2e-h200.md" | tail -3
  rm -f "$OUT/$m/video_e2e-h200.png"
done
