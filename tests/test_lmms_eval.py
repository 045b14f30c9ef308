"""The lmms-eval model prism_qwen_vl: the real lmms-eval CLI on the offline smoke task (tiny model, CPU), its grouping
of requests by video, its stream model_args."""
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
from prism_mm.pipelines.record import RunRecord  # noqa: E402
from prism_mm.testing.tiny import save_tiny  # noqa: E402


def test_lmms_eval_cli_builds_each_clip_prefix_once(tmp_path):
    """The real lmms-eval CLI, dense then prism, on the smoke task with 2 clips x 3 questions listed alternately
    (clip 0, clip 1, clip 0, ...): each clip is decoded and prefilled once (prefixes_built == 2, one sample per clip
    with reused=False), its questions are answered one after another, lmms-eval logs and scores for each doc the
    answer our record holds for it; per sample the record has the visual tokens and the question's own timings; the summaries count
    videos, questions and prefixes and give the prism-vs-dense speed-ups."""
    beside = Path(sys.executable).parent / "lmms-eval"  # the venv's console script, activated or not
    lmms_eval = str(beside) if beside.exists() else shutil.which("lmms-eval")
    assert lmms_eval, "the lmms-eval console script is not on PATH"
    model = save_tiny("qwen2_5_vl", tmp_path / "tiny")
    task_dir = write_smoke_task(tmp_path / "task", videos=2, seconds=3)
    data = task_dir / "smoke.json"
    docs = json.loads(data.read_text())
    docs = docs[0::3] + docs[1::3] + docs[2::3]  # q0 of clips 0, 1; q1 of clips 0, 1; ...
    assert [Path(d["video"]).name for d in docs] == ["demo_0.mp4", "demo_1.mp4"] * 3
    data.write_text(json.dumps(docs))
    out, stats = tmp_path / "out", tmp_path / "out" / "prism_stats"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for attn in ("dense", "prism"):
        # the default preprocess=lmms_eval (bf16, lmms-eval's qwen2_5_vl frame choice), with small frames
        args = (f"pretrained={model},attn={attn},block_size=16,min_sparse_len=0,max_density=1.0,max_num_frames=4,"
                f"min_pixels=3136,max_pixels=50176,stats_dir={stats}")
        proc = subprocess.run([lmms_eval, "--model", "prism_qwen_vl", "--model_args", args, "--tasks", "prism_smoke",
                               "--include_path", str(task_dir), "--output_path", str(out / attn), "--log_samples",
                               "--batch_size", "1"], capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = [json.loads(p.read_text()) for p in (out / attn).rglob("*_results.json")]
        assert results, "lmms-eval wrote no results file"
        acc = results[0]["results"]["prism_smoke"]["accuracy,none"]
        samples = [json.loads(line) for line in (stats / f"samples-{attn}-rank0.jsonl").read_text().splitlines()]
        assert len(samples) == 6 and {s["doc_id"] for s in samples} == set(range(6))
        # answered a clip at a time, in the order the clips first appear; one prefix build per clip
        assert [Path(s["video"]).name for s in samples] == ["demo_0.mp4"] * 3 + ["demo_1.mp4"] * 3
        assert [s["reused"] for s in samples] == [False, True, True] * 2
        for s in samples:
            assert s["video"] == docs[s["doc_id"]]["video"] and s["attn"] == attn
        # lmms-eval logged and scored, for each doc, the answer our record holds for that doc (the tiny model's
        # answers may all be alike: test_generate_until_groups_by_video_in_request_order checks the order itself)
        logged = [json.loads(line) for p in (out / attn).rglob("*_samples_prism_smoke.jsonl")
                  for line in p.read_text().splitlines()]
        by_doc = {s["doc_id"]: s["answer"] for s in samples}
        assert sorted(x["doc_id"] for x in logged) == list(range(6))
        assert all(_logged_answer(x) == by_doc[x["doc_id"]] for x in logged)
        expected = sum(parse_letter(s["answer"]) == docs[s["doc_id"]]["answer"] for s in samples) / len(samples)
        assert acc == pytest.approx(expected)
        for s in samples:  # one RunRecord per sample (plus task, doc_id, video); streamed by default
            assert set(s) >= ({f.name for f in fields(RunRecord)} - {"layers_vs_dense"}) | \
                {"task", "doc_id", "video", "total_s", "first_token_s"}
            assert s["visual_tokens"] > 0 and s["question_tokens"] > 0 and s["question_s"] > 0
            assert s["first_token_s"] == pytest.approx(s["video_s"] + s["prefill_s"] + s["question_s"])
            assert s["streamed"] and 0 < s["mean_density"] <= 1 and (s["sparse_layers"] > 0) == (attn == "prism")
            # the build's seconds are the first answer's; a reused prefix costs its answers no video or prefill time
            if s["reused"]:
                assert s["video_s"] == s["prefill_s"] == 0
            else:
                assert s["video_s"] > 0 and s["prefill_s"] > 0
        summary = json.loads((stats / f"summary-{attn}-rank0.json").read_text())
        assert summary["videos"] == summary["prefixes_built"] == summary["streamed"] == 2
        assert summary["questions"] == 6
        assert summary["seconds_per_question"] == pytest.approx(sum(s["total_s"] for s in samples) / 6)
        assert summary["total_prefill_s"] == pytest.approx(sum(s["prefill_s"] for s in samples))
    summary = json.loads((stats / "summary-prism-rank0.json").read_text())
    dense = json.loads((stats / "summary-dense-rank0.json").read_text())
    assert summary["prefill_speedup_prism_vs_dense"] == pytest.approx(dense["total_prefill_s"] / summary["total_prefill_s"])
    assert summary["first_token_speedup_prism_vs_dense"] == \
        pytest.approx(dense["total_first_token_s"] / summary["total_first_token_s"])


def _logged_answer(sample: dict) -> str:
    """The answer lmms-eval logged for a sample as the model returned it ("resps", which it leaves out where its
    filters changed nothing)."""
    answer = sample.get("resps", sample["filtered_resps"])
    while isinstance(answer, list):
        answer = answer[0]
    return answer


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
                         stream=stream, stats_dir=str(tmp_path / "stats"), preprocess="qwen")
        answers[stream] = lm._ask(lm.session.load_video(clip, lm.video_options), "What moves?", {"max_new_tokens": 3})
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
                  stats_dir=str(tmp_path / "stats"), preprocess="qwen")
    assert PrismQwenVL(**common).session.stream_chunks.decoder_tokens == 8192
    runs = {}
    for tokens in ("16", "0"):
        lm = PrismQwenVL(**common, stream_chunk_tokens=tokens)
        runs[tokens] = lm._ask(lm.session.load_video(clip, lm.video_options), "What moves?", {"max_new_tokens": 3})
    assert runs["16"][1]["decoder_chunks"] > 1 and runs["0"][1]["decoder_chunks"] == 1
    assert runs["16"][0] == runs["0"][0]
    with pytest.raises(ValueError, match=r"stream_chunk_tokens must be >= 0 \(0: one pass\), got -1"):
        PrismQwenVL(**common, stream_chunk_tokens=-1)


class _Session:
    """Stands in for the model's VideoSession: a video's answer to `question` is "<clip>:<question> STOP ...", and
    each load_video and ask is logged."""

    def __init__(self, prefixes):
        self.prefixes, self.log = prefixes, []

    def load_video(self, path, options):
        self.log.append(("load", Path(path).name))
        return _Video(self, Path(path).name)


class _Video:
    def __init__(self, session, name):
        self.session, self.name, self.asked = session, name, 0

    def ask(self, question, max_new_tokens):
        self.session.log.append(("ask", self.name))
        self.asked += 1
        return RunRecord("prism", f"{self.name}:{question} STOP tail", 0.0, None, 0.0, 1, 1.0, 0, visual_tokens=8,
                         reused=self.asked > 1)


def test_generate_until_groups_by_video_in_request_order(tmp_path):
    """Requests alternating between two videos: each video is loaded once and its questions are asked one after
    another (videos in the order they first appear), and the answers come back in the requests' order, cut at the
    "until" string; the summary counts 2 videos, 5 questions, 2 prefixes built."""
    from types import SimpleNamespace

    from prism_mm.eval.model import PrismQwenVL

    model = str(save_tiny("qwen2_5_vl", tmp_path / "tiny"))
    lm = PrismQwenVL(pretrained=model, max_num_frames=4, stats_dir=str(tmp_path / "stats"), preprocess="qwen")
    lm.session = _Session(lm.session.prefixes)
    docs = [{"video": str(tmp_path / name)} for name in ("b.mp4", "a.mp4", "b.mp4", "a.mp4", "b.mp4")]
    lm.task_dict = {"t": {"test": docs}}
    requests = [SimpleNamespace(args=(f"q{i}", {"until": [" STOP"], "max_new_tokens": 4}, lambda doc: [doc["video"]],
                                      i, "t", "test")) for i in range(len(docs))]
    answers = lm.generate_until(requests)
    assert answers == ["b.mp4:q0", "a.mp4:q1", "b.mp4:q2", "a.mp4:q3", "b.mp4:q4"]
    assert lm.session.log == [("load", "b.mp4")] + [("ask", "b.mp4")] * 3 + [("load", "a.mp4")] + [("ask", "a.mp4")] * 2
    assert [r["doc_id"] for r in lm.records] == [0, 2, 4, 1, 3]
    summary = json.loads((tmp_path / "stats" / "summary-prism-rank0.json").read_text())
    assert (summary["videos"], summary["questions"], summary["prefixes_built"]) == (2, 5, 2)
