#!/usr/bin/env bash
# One call on a lent GPU machine (from the repo root; $OUT is the folder that comes back): GPU correctness tests at
# real sizes, then the kernel benchmark with the given arguments, e.g. bash lab/gpu_run.sh --lengths 32768 131072.
# Logs and kernels-<device>.{json,md,png} under $OUT. SKIP_TESTS=1 runs the benchmark only.
set -uo pipefail
export PYTHONUNBUFFERED=1
pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -q -x tests/ -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.log" | tail -15
fi
python3 -m benchmarks.kernels "$@" --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -v "^skip" | tail -60
