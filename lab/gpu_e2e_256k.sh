#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), sixth session: video_e2e's rows at 256K visual tokens
# (the "256K and more where memory allows") for one model, one timed forward per row after the warm-ups,
# merged into a copy of the committed results (host table kept). Usage: lab/gpu_e2e_256k.sh MODEL [TIMEOUT]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
model=$1; limit=${2:-560}
cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$OUT/"
timeout "$limit" python3 -m benchmarks.video_e2e --models "$model" --tokens 262144 --reps 1 --no-host-time --merge \
  --layer-densities benchmarks/results/fidelity-qwen2.5-coder-0.5b.json --out "$OUT" 2>&1 | grep -v "^skip" \
  | tee "$OUT/e2e-256k.log" | grep "^| ${model#*/}" | grep 26 | tail -8
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
