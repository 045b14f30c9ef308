#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back; carry .whl with decord 0.6.0, av 15.1.0 and
# qwen-vl-utils 0.0.14, which the GPU image lacks), eighth session:
# 1. the parallel reader's tests and the sampling equality tests on the GPU host's 16 cores;
# 2. lab/reader_probe.py: decord against read_frames per (workers, threads), sample_frames whole per reader, on a 60 s
#    ultrafast clip (key frame every 250 frames), a 60 s veryfast clip (B-frames, key frame every 60) and a 300 s
#    ultrafast clip.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
timeout 150 python3 -m pytest -q tests/test_frames.py "tests/test_video_qa.py::test_sampling_equals_qwen_vl_utils_fetch_video" \
  -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-host-frames.log" | tail -3
timeout 380 python3 lab/reader_probe.py --clip 60:ultrafast:250 --clip 60:veryfast:60 --clip 300:ultrafast:250 \
  2>&1 | tee "$OUT/reader_probe-h200-16cores.jsonl"
