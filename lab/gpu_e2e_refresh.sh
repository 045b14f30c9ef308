#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back): after fused norms became the default (2026-12-02),
# 1. the replay's GPU test (kept TMA descriptors re-pointed per call); 2. video_e2e's rows for Qwen2.5-VL-7B at 32K,
# 64K and 128K with the real-density row, merged into a copy of the committed results (host table kept);
# 3. host_probe's components (select_and_attend with the kept descriptors), if time is left.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 90 python3 -m pytest -q tests/test_gpu_sizes.py -k "replays or cached or end_to_end or no_host_sync" \
  -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-replay.log" | tail -2
cp benchmarks/results/video_e2e-h200.json benchmarks/results/video_e2e-h200.md "$OUT/"
timeout 440 python3 -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --no-host-time --merge \
  --layer-densities benchmarks/results/fidelity-qwen2.5-coder-0.5b.json --out "$OUT" 2>&1 | grep -v "^skip" \
  | grep "^| Qwen2.5" | tail -16
timeout 50 python3 lab/host_probe.py --tokens 33536 --components-only --label new-desc >> "$OUT/host_probe.jsonl" \
  2>> "$OUT/host_probe.err"
python3 - "$OUT/host_probe.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["what"] in ("component", "gpu time"):
        print(r["name"], r.get("host_us", r.get("gpu_ms")))
PY
