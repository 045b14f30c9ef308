#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02 (fifth session): lab/replay_probe.py at 33K
# RUNS times (default 3: the host moves between runs), each within TIMEOUT seconds (default 150), after the host-path
# trims, and one line per piece with its times. Usage: bash lab/gpu_replay_probe.sh [RUNS [TIMEOUT]]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
for r in $(seq "${1:-3}"); do
  timeout "${2:-150}" python3 lab/replay_probe.py --tokens 33536 --label "r$r" >> "$OUT/replay_probe.jsonl" 2>> "$OUT/replay_probe.err"
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
