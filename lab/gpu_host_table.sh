#!/usr/bin/env bash
# One short call on a lent GPU machine (repo root; $OUT comes back): video_e2e's host table at 32K for Qwen2.5-VL-7B
# (the current tree), merged into a copy of the committed results in DIR (default $OUT), within TIMEOUT seconds
# (default 200). Usage: bash lab/gpu_host_table.sh [DIR [TIMEOUT]]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
dir=${1:-$OUT}
mkdir -p "$dir"
cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$dir/"
timeout "${2:-200}" python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 32768 --host-time-only \
  --merge --warmup-visual-tokens 4096 --out "$dir" 2>&1 | grep "^| Qwen2.5" | tail -5
rm -f "$dir/video_e2e-h200.png"
