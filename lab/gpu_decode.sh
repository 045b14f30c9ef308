#!/usr/bin/env bash
# One call on a lent GPU machine (repo root; $OUT comes back; carry .whl with decord 0.6.0, av 15.1.0 and
# qwen-vl-utils 0.0.14, which the GPU image lacks), seventh session:
# 1. the GPU tests of the replay (b23ba84's last change had not run on a GPU) and of the GPU frame resize;
# 2. lab/decode_probe.py on this 16-core host: decord readers, contiguous runs in threads, resize on CPU and GPU,
#    sample_frames whole per device; a 60 s clip (2 repeats), then a 300 s clip (1 repeat).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
timeout 200 python3 -m pytest -q tests/test_gpu_sizes.py -k "replays or cached or end_to_end or no_host_sync or resized or processor" \
  -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-replay-resize.log" | tail -3
timeout 150 python3 lab/decode_probe.py --seconds 60 --workers 1 2 4 8 16 --reader-threads 1 0 \
  --resize-device cpu cuda --repeats 2 2>&1 | tee "$OUT/decode_probe-60s.jsonl"
timeout 200 python3 lab/decode_probe.py --seconds 300 --workers 4 8 16 --reader-threads 1 \
  --resize-device cpu cuda --repeats 1 2>&1 | tee "$OUT/decode_probe-300s.jsonl"
