#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02 (fifth session): lab/replay_probe.py at 33K
# three times (the host moves between runs), after the host-path trims.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
for r in 1 2 3; do
  timeout 150 python3 lab/replay_probe.py --tokens 33536 --label "r$r" >> "$OUT/replay_probe.jsonl" 2>> "$OUT/replay_probe.err"
done
python3 - "$OUT/replay_probe.jsonl" <<'PY'
import json, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["what"] == "piece":
        rows[r["name"]].append(r["host_us"])
for name, us in rows.items():
    print(f"{name:45s}", " ".join(f"{u:7.1f}" for u in us))
PY
tail -3 "$OUT/replay_probe.err"
