#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back; carry [".stage/old"] = git archive 84d7063 prism_mm),
# 2026-12-02 (fifth session): the host-path trims written without a GPU (PrismLayer.prepared, the one-expression
# check, the Replay's addresses / one stream lookup / three allocations). 1. the GPU tests of the replay, the host path
# and the API; 2. lab/host_probe.py old / new interleaved for ROUNDS rounds (default 2) at 33K (components; decoder
# layers with the attention call timed in situ, GC on / off). Usage: bash lab/gpu_host_trim.sh [ROUNDS [SKIP_TESTS]]
set -uo pipefail
export PYTHONUNBUFFERED=1
rounds=${1:-2}
if [ "${2:-0}" != 1 ]; then
  tests="replays or cached or end_to_end or no_host_sync or test_api or select_and_attend or launch or signature"
  PYTHONPATH=$PWD timeout 170 python3 -m pytest -q tests/test_gpu_sizes.py tests/test_api.py tests/test_kernels.py \
    -p no:cacheprovider -k "$tests or descriptor or replay" 2>&1 | tee "$OUT/pytest-gpu.log" | tail -3
fi
bash lab/host_probe_rounds.sh "$rounds" old 100
python3 lab/host_probe_summary.py "$OUT/host_probe.jsonl" prism_attention_forward \
  "transformers sdpa_attention_forward" select_and_attend "torch x.add_(1)"
tail -3 "$OUT/host_probe.err"
