#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back) for the fused RMSNorm (prism_mm/norms.py, not yet run on
# a GPU when written): its GPU tests, lab/norm_probe.py, then video_e2e's rows for Qwen2.5-VL-7B at 128K with the
# fused-norm rows (--fused-norms, rows only) written to $OUT (merge by hand into benchmarks/results if kept).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
python3 -m pytest -q tests/test_gpu_sizes.py tests/test_norms.py -k "rms_norm or norm" -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu-norms.log" | tail -3
python3 lab/norm_probe.py 2>&1 | tee "$OUT/norm_probe.jsonl"
python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 131072 --fused-norms --no-host-time \
  --out "$OUT" 2>&1 | grep -v "^skip" | tail -12
