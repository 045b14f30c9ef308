#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back) for what was written without a GPU on 2026-12-01: the
# fused RMSNorm (prism_mm/norms.py) and the processor making the pixels on the GPU. Their GPU tests, lab/norm_probe.py,
# then video_e2e's rows for Qwen2.5-VL-7B at 128K (the processor on the GPU in prism_mm's rows, both processor times
# recorded) with the rows of transformers' norms (--norm-ablation; --fused-norms when it ran), into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
python3 -m pytest -q tests/test_gpu_sizes.py tests/test_norms.py tests/test_kernels.py -k "norm or processor" -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu-norms.log" | tail -3
python3 lab/norm_probe.py 2>&1 | tee "$OUT/norm_probe.jsonl"
python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 131072 --norm-ablation --no-host-time \
  --out "$OUT" 2>&1 | grep -v "^skip" | tail -12
