#!/usr/bin/env bash
# Eleventh session, first call: video_e2e's host tables at 32K for Qwen2.5-VL-7B and Qwen3-VL-8B, with the paired-layer
# table (host_pairs: two modes on alternate decoder layers of one forward, 10 forwards per pair), merged into a copy of
# the committed results in $OUT/e2e.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p "$OUT/e2e"
cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$OUT/e2e/"
nproc > "$OUT/host.txt"; lscpu | grep -i "model name\|mhz" >> "$OUT/host.txt"
timeout 570 python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct Qwen/Qwen3-VL-8B-Instruct \
  --tokens 32768 --host-time-only --merge --warmup-visual-tokens 4096 --pair-forwards 10 --out "$OUT/e2e" \
  > "$OUT/e2e/log.txt" 2>&1
echo rc=$?
grep "^| Qwen" "$OUT/e2e/video_e2e-h200.md" | tail -16
rm -f "$OUT/e2e/video_e2e-h200.png"
