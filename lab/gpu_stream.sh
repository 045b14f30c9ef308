#!/usr/bin/env bash
# One call on a lent GPU machine (carry .whl: decord, av, qwen-vl-utils), eighth session: the streaming tests on the
# GPU, then lab/stream_probe.py on a 300 s 720p clip (Qwen2.5-VL-7B random weights, ~128K visual tokens).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
timeout 120 python3 -m pytest -q tests/test_stream.py -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu-host-stream.log" | tail -3
timeout 420 python3 lab/stream_probe.py --seconds 300 --preset ultrafast --gop 250 2>&1 | grep -v Warning \
  | tee "$OUT/stream_probe-h200-300s.jsonl"
