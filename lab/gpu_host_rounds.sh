#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back), 2026-12-02: video_e2e's host table at 32K for
# Qwen2.5-VL-7B three more times (the table moves by +-15% between runs on this host), each into its own folder.
set -uo pipefail
for r in 1 2 3; do
  bash lab/gpu_host_table.sh "$OUT/r$r" 170
  rm -f "$OUT/r$r/video_e2e-h200.md"
done
