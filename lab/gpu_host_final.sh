#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02 (fifth session), after causal_block_count's
# closed form: lab/replay_probe.py at 33K twice, then video_e2e's host table at 32K for Qwen2.5-VL-7B twice, each in
# its own folder.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
bash lab/gpu_replay_probe.sh 2 100
for r in 1 2; do
  bash lab/gpu_host_table.sh "$OUT/r$r" 170
  rm -f "$OUT/r$r/video_e2e-h200.md"
done
