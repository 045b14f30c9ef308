"""The real lmms-eval CLI with --model prism_qwen_vl on the offline smoke task (tiny model, CPU)."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("decord")

from prism_mm.eval.smoke import write_smoke_task  # noqa: E402
from prism_mm.eval.smoke_template.utils import parse_letter  # noqa: E402
from prism_mm.pipelines.session import RunRecord  # noqa: E402
from prism_mm.testing.tiny import save_tiny  # noqa: E402


def test_lmms_eval_cli_prism_and_dense(tmp_path):
    beside = Path(sys.executable).parent / "lmms-eval"  # the venv's console script, activated or not
    lmms_eval = str(beside) if beside.exists() else shutil.which("lmms-eval")
    assert lmms_eval, "the lmms-eval console script is not on PATH"
    model = save_tiny("qwen2_5_vl", tmp_path / "tiny")
    task_dir = write_smoke_task(tmp_path / "task", videos=1, seconds=3)
    out, stats = tmp_path / "out", tmp_path / "out" / "prism_stats"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for attn in ("dense", "prism"):
        args = f"pretrained={model},attn={attn},block_size=16,min_sparse_len=0,max_density=1.0,max_num_frames=4,stats_dir={stats}"
        proc = subprocess.run([lmms_eval, "--model", "prism_qwen_vl", "--model_args", args, "--tasks", "prism_smoke",
                               "--include_path", str(task_dir), "--output_path", str(out / attn), "--log_samples",
                               "--batch_size", "1"], capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = [json.loads(p.read_text()) for p in (out / attn).rglob("*_results.json")]
        assert results, "lmms-eval wrote no results file"
        acc = results[0]["results"]["prism_smoke"]["accuracy,none"]
        samples = [json.loads(line) for line in (stats / f"samples-{attn}-rank0.jsonl").read_text().splitlines()]
        assert len(samples) == 4  # 1 clip x 4 questions
        # lmms-eval's accuracy is the task's scoring of the answers our model returned (the records hold them)
        targets = [d["answer"] for d in json.loads((task_dir / "smoke.json").read_text())]  # doc_id = position
        expected = sum(parse_letter(s["answer"]) == targets[s["doc_id"]] for s in samples) / len(samples)
        assert acc == pytest.approx(expected)
        for s in samples:  # one RunRecord per sample (plus task, doc_id, total_s, first_token_s); streamed by default
            assert set(s) >= ({f.name for f in fields(RunRecord)} - {"layers_vs_dense"}) | \
                {"task", "doc_id", "total_s", "first_token_s"} and s["attn"] == attn
            assert s["streamed"] and s["first_token_s"] == pytest.approx(s["video_s"] + s["prefill_s"])
            assert s["visual_tokens"] > 0 and s["prefill_s"] > 0 and 0 < s["mean_density"] <= 1
            assert (s["sparse_layers"] > 0) == (attn == "prism")
    summary = json.loads((stats / "summary-prism-rank0.json").read_text())
    dense = json.loads((stats / "summary-dense-rank0.json").read_text())
    assert summary["samples"] == summary["streamed"] == 4 and summary["total_prefill_s"] > 0
    assert summary["prefill_speedup_prism_vs_dense"] == pytest.approx(dense["total_prefill_s"] / summary["total_prefill_s"])
    assert summary["first_token_speedup_prism_vs_dense"] == \
        pytest.approx(dense["total_first_token_s"] / summary["total_first_token_s"])


def test_model_arg_stream_gives_the_unstreamed_answer(tmp_path):
    """prism_qwen_vl with stream=true (the default) decodes each video while the vision tower runs: same answer and
    visual tokens as stream=false (thresholds 1.0), and its record says it streamed."""
    from prism_mm.eval.model import PrismQwenVL
    from prism_mm.testing.clips import make_demo_video

    model = str(save_tiny("qwen2_5_vl", tmp_path / "tiny"))
    clip = str(make_demo_video(tmp_path / "clip.mp4", seconds=3, fps=8, height=112, width=168))
    answers = {}
    for stream in ("false", "true"):
        lm = PrismQwenVL(pretrained=model, block_size=16, min_sparse_len=0, threshold=1.0, max_num_frames=4,
                         stream=stream, stats_dir=str(tmp_path / "stats"))
        answers[stream] = lm._answer("What moves?", [clip], {"max_new_tokens": 3})
    (plain, plain_record), (streamed, streamed_record) = answers["false"], answers["true"]
    assert streamed == plain and streamed_record["streamed"] and not plain_record["streamed"]
    assert streamed_record["visual_tokens"] == plain_record["visual_tokens"] > 0


def test_model_arg_stream_chunk_tokens(tmp_path):
    """stream_chunk_tokens: the streamed decoder prefill's chunks (8192 by default, the session's STREAM_CHUNKS); 16
    gives several decoder chunks and, at thresholds 1.0, the answer of 0 (one pass after the stream); a negative
    value is refused."""
    from prism_mm.eval.model import PrismQwenVL
    from prism_mm.testing.clips import make_demo_video

    model = str(save_tiny("qwen2_5_vl", tmp_path / "tiny"))
    clip = str(make_demo_video(tmp_path / "clip.mp4", seconds=3, fps=8, height=112, width=168))
    common = dict(pretrained=model, block_size=16, min_sparse_len=0, threshold=1.0, max_num_frames=4,
                  stats_dir=str(tmp_path / "stats"))
    assert PrismQwenVL(**common).session.stream_chunks.decoder_tokens == 8192
    runs = {}
    for tokens in ("16", "0"):
        lm = PrismQwenVL(**common, stream_chunk_tokens=tokens)
        runs[tokens] = lm._answer("What moves?", [clip], {"max_new_tokens": 3})
    assert runs["16"][1]["decoder_chunks"] > 1 and runs["0"][1]["decoder_chunks"] == 1
    assert runs["16"][0] == runs["0"][0]
    with pytest.raises(ValueError, match=r"stream_chunk_tokens must be >= 0 \(0: one pass\), got -1"):
        PrismQwenVL(**common, stream_chunk_tokens=-1)
