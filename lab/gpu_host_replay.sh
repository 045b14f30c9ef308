#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back; carry [".stage/old"] = git archive 9387b8f prism_mm):
# select_and_attend (the sparse path's launches replayed per kind of input, written 2026-12-02 without a GPU):
# 1. GPU tests (test_gpu_sizes, test_api, the host-path tests of test_kernels); 2. lab/host_probe.py old / new, two
# interleaved rounds at 33K (components incl. select_and_attend and its GPU time; decoder layers, attention call in
# situ); 3. video_e2e's host table at 32K with the fused-norm modes, merged into a copy of the committed results.
set -uo pipefail
export PYTHONUNBUFFERED=1
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q tests/test_gpu_sizes.py tests/test_api.py -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu.log" | tail -3
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q tests/test_kernels.py -p no:cacheprovider \
  -k "select_and_attend or launch or signature or rms or descriptor" 2>&1 | tee "$OUT/pytest-gpu-kernels.log" | tail -3
bash lab/host_probe_rounds.sh 2 old 100
python3 lab/host_probe_summary.py "$OUT/host_probe.jsonl" --gpu-time prism_attention_forward \
  "transformers sdpa_attention_forward" "estimate()" block_sparse_attention select_and_attend "torch x.add_(1)"
tail -3 "$OUT/host_probe.err"
cp benchmarks/results/video_e2e-h200.* "$OUT/"
timeout 170 python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 32768 --host-time-only --merge \
  --fused-norms --out "$OUT" 2>&1 | grep -v "^skip" | tail -8
rm -f "$OUT/video_e2e-h200.png"
