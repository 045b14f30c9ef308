#!/usr/bin/env bash
# The last ~290 s of device time, ninth session: gpu_pipelined_nice.sh cut to fit. A 120 s 720p clip (~44K visual
# tokens), Prism in a row, streamed (decoders niced and not) and streamed with the decoder pipelined in chunks of 8192,
# one warm-up and two runs each, Qwen2.5-VL-7B random weights.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
python3 -c "import sys; sys.path.insert(0, 'lab'); from reader_probe import write_clip; \
write_clip('/tmp/clip120.mp4', 120, 'ultrafast', 250)" > "$OUT/clip.log" 2>&1
timeout 200 python3 lab/first_token_probe.py --clip /tmp/clip120.mp4 --modes prism --chunks 8192 --repeats 2 --nice-ab \
  2>&1 | grep -v Warning | tee "$OUT/first_token_probe-h200-120s-nice.jsonl"
