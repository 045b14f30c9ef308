#!/usr/bin/env bash
# One call on a lent GPU machine (carry .whl: decord, av, qwen-vl-utils), ninth session: the reader's and the
# streaming tests on the GPU host after the eighth session's review mends (the clip is written meanwhile), then
# lab/first_token_probe.py: file -> first token, streamed against in a row, dense and Prism, on a 300 s 720p clip
# (Qwen2.5-VL-7B random weights, ~109K visual tokens; the streamed warm-up on black stand-in frames).
set -uo pipefail
source lab/gpu_common.sh
timeout 150 python3 -m pytest -q tests/test_frames.py tests/test_stream.py "tests/test_video_qa.py::test_streamed_warmup_reads_the_file_once_and_changes_no_answer" "tests/test_video_qa.py::test_streamed_compare_checks_layers_against_dense_as_the_unstreamed_one" "tests/test_video_qa.py::test_python_api_compare" -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest-gpu-host-mends.log" | tail -3
wait $writer
timeout 400 python3 lab/first_token_probe.py --clip /tmp/clip300.mp4 --repeats 2 2>&1 | grep -v Warning \
  | tee "$OUT/first_token_probe-h200-300s.jsonl"
