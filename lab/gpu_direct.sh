#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), sixth session: launch.DirectLaunch (the replay's three
# launches straight through Triton 3.6's C launch functions). 1. the replay's GPU tests (equality with the ops, the
# DirectLaunch form asserted on 3.6); 2. if they pass, lab/replay_probe.py twice (DirectLaunch against the same
# replay through Triton's launchers, in one run); 3. the host table; 4. test_kernels on the GPU in what is left of
# BUDGET seconds (default 560).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
end=$(( $(date +%s) + ${1:-560} ))
timeout 100 python3 -m pytest -q tests/test_gpu_sizes.py -k "replays or cached or end_to_end or no_host_sync" \
  -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-replay.log" | tail -2
if ! tail -1 "$OUT/pytest-gpu-replay.log" | grep -q "passed" || tail -1 "$OUT/pytest-gpu-replay.log" | grep -q "failed"; then
  echo "replay tests did not pass: stopping"; exit 1
fi
bash lab/gpu_replay_probe.sh 2 90
bash lab/gpu_host_table.sh "$OUT/table" 170
left=$(( end - $(date +%s) ))
if [ "$left" -gt 30 ]; then
  timeout "$left" python3 -m pytest -q tests/test_kernels.py -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-kernels.log" | tail -3
fi
