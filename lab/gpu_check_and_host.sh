#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02 (fourth session): 1. the GPU tests of the
# sparse path's replay after the review mends of 60aab0c / 56f280f (written without a GPU) and of the cached launches;
# 2. video_e2e's host table at 32K for Qwen2.5-VL-7B, merged into a copy of the committed results.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q tests/test_gpu_sizes.py -k "replays or cached or end_to_end or no_host_sync" \
  -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-replay.log" | tail -3
timeout 120 python3 -m pytest -q tests/test_kernels.py -p no:cacheprovider \
  -k "select_and_attend or launch or signature or descriptor or replay" 2>&1 | tee "$OUT/pytest-gpu-kernels.log" | tail -3
bash lab/gpu_host_table.sh "$OUT" 220
