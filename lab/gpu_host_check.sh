#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back) for the host-path work of #16, with the old package
# staged and carried: git archive 7f10e18 prism_mm | tar -x -C .stage/old   (carry [".stage/old"]).
# 1. the GPU tests of CachedLaunch and of the host path; 2. estimation time old vs new (one round, 32K and 128K);
# 3. video_e2e's host table for Qwen2.5-VL-7B at 33K, merged into a copy of the committed results.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
python3 -m pytest -q tests/test_gpu_sizes.py tests/test_api.py -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.log" | tail -3
(unset PYTHONPATH; python3 lab/estimation_ab.py --old .stage/old 7f10e18 --rounds 1) 2>&1 | tee "$OUT/estimation_ab.txt"
cp benchmarks/results/video_e2e-h200.json "$OUT/"
python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 32768 --host-time-only --merge \
  --out "$OUT" 2>&1 | grep -v "^skip" | tail -6
python3 lab/host_probe.py --profile > "$OUT/host_profile.txt" 2>&1; tail -2 "$OUT/host_profile.txt"
