#!/usr/bin/env bash
# One call on a lent GPU machine (carry .whl: decord, av, qwen-vl-utils), ninth session: the pipelined prefill's
# tests on the GPU host (the clip is written meanwhile), then lab/first_token_probe.py with Prism on a 300 s 720p
# clip: in a row, streamed, and streamed with the decoder prefill pipelined in chunks of 16384 and 8192 tokens,
# Qwen2.5-VL-7B, then (as long as the call lasts) Qwen3-VL-8B; random weights.
set -uo pipefail
source lab/gpu_common.sh
timeout 110 python3 -m pytest -q tests/test_stream.py tests/test_frames.py \
  "tests/test_video_qa.py::test_streamed_chunked_session_pipelines_the_decoder_and_answers_as_unchunked" \
  "tests/test_video_qa.py::test_python_api_compare" -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu-host-pipelined.log" | tail -3
wait $writer
timeout 290 python3 lab/first_token_probe.py --clip /tmp/clip300.mp4 --modes prism --chunks 16384 8192 --repeats 2 \
  2>&1 | grep -v Warning | tee "$OUT/first_token_probe-h200-300s-pipelined.jsonl"
timeout 170 python3 lab/first_token_probe.py --clip /tmp/clip300.mp4 --modes prism --chunks 16384 --repeats 1 \
  --model Qwen/Qwen3-VL-8B-Instruct 2>&1 | grep -v Warning | tee "$OUT/first_token_probe-h200-300s-qwen3.jsonl"
