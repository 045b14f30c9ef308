#!/usr/bin/env bash
# lab/host_probe.py on the package staged in .stage/old and on the working tree, interleaved for ROUNDS rounds at 33K,
# appended to $OUT/host_probe.jsonl (errors to host_probe.err); the old side labelled OLD_LABEL, each run within
# TIMEOUT seconds (0: none). Called by the lab's GPU scripts. Usage: bash lab/host_probe_rounds.sh ROUNDS [OLD_LABEL [TIMEOUT]]
set -uo pipefail
export PYTHONUNBUFFERED=1
old_label=${2:-old}
limit=${3:-0}
for round in $(seq "$1"); do
  for side in old new; do
    pkg=$PWD; label=$side
    [ "$side" = old ] && pkg=$PWD/.stage/old && label=$old_label
    PYTHONPATH=$pkg timeout "$limit" python3 lab/host_probe.py --tokens 33536 --label "$label-r$round" \
      >> "$OUT/host_probe.jsonl" 2>> "$OUT/host_probe.err"
  done
done
