#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back): host work of the working tree against the package
# staged in .stage/old (git archive REV prism_mm | tar -x -C .stage/old; carry [".stage/old"]).
# 1. the GPU tests of the kernels and the host path; 2. lab/host_probe.py (components, decoder layers with the
# attention call timed in situ, GC on/off) old and new, two interleaved rounds at 33K; 3. estimation GPU time A/B.
set -uo pipefail
export PYTHONUNBUFFERED=1
OLD_LABEL=${1:-old}
PYTHONPATH=$PWD python3 -m pytest -q tests/test_gpu_sizes.py tests/test_api.py tests/test_kernels.py -p no:cacheprovider \
  2>&1 | tee "$OUT/pytest-gpu.log" | tail -3
bash lab/host_probe_rounds.sh 2 "$OLD_LABEL" 0
python3 lab/host_probe_summary.py "$OUT/host_probe.jsonl" prism_attention_forward "transformers sdpa_attention_forward" \
  "estimate()" block_sparse_attention "pool_pair(q, k)" select_blocks
(unset PYTHONPATH; python3 lab/estimation_ab.py --old .stage/old "$OLD_LABEL" --rounds 1) 2>&1 | tee "$OUT/estimation_ab.txt" | tail -3
