#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02 (fifth session), after causal_block_count's
# closed form: lab/replay_probe.py at 33K twice, then video_e2e's host table at 32K for Qwen2.5-VL-7B twice, each in
# its own folder.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
for r in 1 2; do
  timeout 100 python3 lab/replay_probe.py --tokens 33536 --label "r$r" >> "$OUT/replay_probe.jsonl" 2>> "$OUT/replay_probe.err"
done
python3 - "$OUT/replay_probe.jsonl" <<'PY'
import json, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["what"] == "piece":
        rows[r["name"]].append(r["host_us"])
for name, us in rows.items():
    print(f"{name:40s}", " ".join(f"{u:6.1f}" for u in us))
PY
tail -2 "$OUT/replay_probe.err"
for r in 1 2; do
  bash lab/gpu_host_table.sh "$OUT/r$r" 170
  rm -f "$OUT/r$r/video_e2e-h200.md"
done
