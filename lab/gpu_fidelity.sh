#!/usr/bin/env bash
# Real-weight runs on a lent GPU machine (from the repo root; $OUT comes back). The machine cannot download, so the
# Qwen2.5-Coder-0.5B GGUF (491 MB) travels in 60 MiB pieces over consecutive calls while the machine stays warm:
#   here:   G=~/.cache/prism_mm/weights/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf; mkdir -p .stage && cd .stage &&
#           split -b 60M -d -a 1 $G part && for i in part*; do mkdir ${i#part}; mv $i ${i#part}/; done
#           (.stage/ and .whl/ listed in .git/info/exclude; .whl/ holds the gguf wheel, see lab/README.md)
#   there:  one call per piece, carry [".stage/N"]:  mkdir -p /tmp/w && cp .stage/N/part* /tmp/w/
#   last:   bash lab/gpu_fidelity.sh   (carry [".whl"]): reassembles and checks the GGUF (sha256, through
#           prism_mm.testing.weights), then NIAH and the model-level check in bf16 with the Triton kernels.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
W=$HOME/.cache/prism_mm/weights
mkdir -p "$W"
[ -f "$W/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf" ] || cat /tmp/w/part0 /tmp/w/part1 /tmp/w/part2 /tmp/w/part3 \
  /tmp/w/part4 /tmp/w/part5 /tmp/w/part6 /tmp/w/part7 > "$W/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
python3 -m prism_mm.testing.weights || exit 1   # checks size and sha256
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# NIAH_ARGS / FID_ARGS: extra arguments; with --merge the committed H200 results are merged into.
cp benchmarks/results/niah-qwen2.5-coder-0.5b-h200.json benchmarks/results/fidelity-qwen2.5-coder-0.5b-h200.json "$OUT/" 2>/dev/null
timeout "${NIAH_S:-330}" python3 -m benchmarks.niah --device cuda --tokens 8192 16384 32768 ${NIAH_ARGS:-} \
  --out "$OUT" 2>&1 | tee "$OUT/niah.log" | grep -v "it/s\]$" | tail -40
timeout "${FID_S:-150}" python3 -m benchmarks.fidelity --model qwen2.5-coder-0.5b --tokens 8192 16384 32768 \
  --model-level-only --device cuda ${FID_ARGS:-} --out "$OUT" 2>&1 | tee "$OUT/fidelity.log" | tail -40
