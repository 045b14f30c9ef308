#!/usr/bin/env bash
# For the next session's first GPU call (repo root; $OUT comes back): the GPU tests the fifth session's device time
# did not reach (test_kernels on the final tree, lab/logs/pytest-gpu-h200-final-partial.log stopped inside it), then
# lab/replay_probe.py twice (with the decoding step that now runs dense SDPA alone) and the host table once.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q tests/test_kernels.py -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-kernels.log" | tail -3
bash lab/gpu_replay_probe.sh 2 100
bash lab/gpu_host_table.sh "$OUT/table" 170
