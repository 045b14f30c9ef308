"""lmms-eval parity (issue #34): `prism_qwen_vl attn=dense` with preprocess=lmms_eval (its default) feeds a tiny
Qwen2-VL / Qwen2.5-VL / Qwen3-VL what lmms-eval's own qwen2_vl / qwen2_5_vl / qwen3_vl class (--force_simple) feeds
it, through the real lmms-eval CLI on the smoke task, and gives its answers; with preprocess=qwen it feeds what
qwen-vl-utils' process_vision_info and the processor give. What reaches the model is captured by a forward hook in
both runs (tests/lmms_capture.py): the token ids, the vision tower's grid and pixel values (a hash per temporal
patch, in the tower's dtype), the decoder's MRoPE position ids, for every document."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("decord")
pytest.importorskip("qwen_vl_utils")

import lmms_capture  # noqa: E402

from prism_mm.eval import model as parity  # noqa: E402  (its lmms-eval parity part)
from prism_mm.eval.smoke import write_smoke_task  # noqa: E402
from prism_mm.testing.clips import make_demo_video  # noqa: E402
from prism_mm.testing.tiny import SPECIAL_TOKENS, save_tiny  # noqa: E402

FRAMES = 6  # max_num_frames: the 2 s clip has fewer 2-fps frames than that (4), the 4 s clip more (8)
CLIPS = {"short": 2.0, "long": 4.0}  # seconds


def test_parity_versions():
    """Parity with lmms-eval's classes was established on PARITY_VERSIONS: another lmms-eval, transformers or
    qwen-vl-utils may feed the model differently, so this fails until the parity tests pass on it and
    PARITY_VERSIONS names it."""
    have = parity.installed_versions()
    assert have == parity.PARITY_VERSIONS, (
        f"prism_qwen_vl's preprocess=lmms_eval was checked against lmms-eval's classes on {parity.PARITY_VERSIONS}; "
        f"installed: {have}. Run tests/test_lmms_parity.py; when it passes, set prism_mm.eval.model.PARITY_VERSIONS "
        "to the installed versions (and fix prism_mm/eval/model.py, pipelines/video.py's lmms_eval sampler where "
        "it fails)")


def test_families_are_lmms_evals_class_defaults():
    """FAMILIES' model_arg defaults (min_pixels, max_pixels), the system prompt and max_num_frames 32 are the
    __init__ defaults of lmms-eval's classes, Qwen3-VL's max_new_tokens its DEFAULT_GEN_KWARGS'; the video element
    built for Qwen3-VL is its _build_video_kwargs' for each of its three cases (nframes, fps, total_pixels)."""
    import inspect
    from types import SimpleNamespace

    from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
    from lmms_eval.models.simple.qwen2_vl import Qwen2_VL
    from lmms_eval.models.simple.qwen3_vl import Qwen3_VL

    from prism_mm.pipelines.video import VideoOptions, lmms_eval_request

    for name, cls in (("qwen2_vl", Qwen2_VL), ("qwen2_5_vl", Qwen2_5_VL), ("qwen3_vl", Qwen3_VL)):
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        family = parity.FAMILIES[name]
        assert (defaults["min_pixels"], defaults["max_pixels"]) == (family.min_pixels, family.max_pixels), name
        assert defaults["system_prompt"] == parity.LMMS_EVAL_SYSTEM_PROMPT and defaults["max_num_frames"] == 32, name
    assert Qwen3_VL.DEFAULT_GEN_KWARGS["max_new_tokens"] == parity.FAMILIES["qwen3_vl"].max_new_tokens
    for fps, total in ((None, None), (1.0, None), (None, 4_000_000)):
        theirs = Qwen3_VL._build_video_kwargs(SimpleNamespace(min_pixels=200704, max_pixels=1605632, fps=fps,
                                                              total_pixels=total, max_num_frames=512))
        if "nframes" in theirs:  # Qwen3_VL caps it at the file's frames per video
            theirs["nframes"] = min(theirs["nframes"], 300)
        opts = VideoOptions(fps=fps, max_frames=512, min_pixels=200704, max_pixels=1605632, total_pixels=total,
                            sampler="lmms_eval")
        assert lmms_eval_request("clip.mp4", opts, "qwen3_vl", 300) == {"video": "clip.mp4", **theirs}


def _lmms_eval():
    beside = Path(sys.executable).parent / "lmms-eval"  # the venv's console script, activated or not
    found = str(beside) if beside.exists() else shutil.which("lmms-eval")
    assert found, "the lmms-eval console script is not on PATH"
    return found


def _task(tmp_path: Path, capture: Path | None = None) -> tuple[Path, list[dict]]:
    """The smoke task over a 2 s and a 4 s clip (8 fps, 168 x 112), 3 questions each, each question text unique (so a
    captured prompt names its document); with `capture`, the task's utils.py installs the capture hook."""
    task_dir = write_smoke_task(tmp_path / "task", videos=1, seconds=CLIPS["short"])
    docs = json.loads((task_dir / "smoke.json").read_text())
    long = make_demo_video(task_dir / "demo_long.mp4", seconds=CLIPS["long"], fps=8, height=112, width=168, seed=5)
    docs += [dict(doc, id=f"long-{i}", video=str(long)) for i, doc in enumerate(docs)]
    for i, doc in enumerate(docs):
        doc["question"] = f"{doc['question']} (doc {i})"
    (task_dir / "smoke.json").write_text(json.dumps(docs))
    if capture is not None:
        lmms_capture.load_into(task_dir, capture)
    return task_dir, docs


def _run(model: str, args: str, task_dir: Path, out: Path, capture: Path) -> dict[int, str]:
    """lmms-eval's CLI on the task; the answer it logged per doc id."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    extra = ["--force_simple"] if model != "prism_qwen_vl" else []
    proc = subprocess.run([_lmms_eval(), "--model", model, *extra, "--model_args", args, "--tasks", "prism_smoke",
                           "--include_path", str(task_dir), "--output_path", str(out), "--log_samples",
                           "--batch_size", "1"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"lmms-eval --model {model} failed:\n{proc.stderr[-4000:]}"
    assert capture.exists(), f"the capture hook saw no model call in lmms-eval --model {model}"
    logged = {}
    for path in out.rglob("*_samples_prism_smoke.jsonl"):
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            answer = sample.get("resps", sample["filtered_resps"])
            while isinstance(answer, list):
                answer = answer[0]
            logged[sample["doc_id"]] = answer
    return logged


def _by_doc(captured: list[dict]) -> dict[int, dict]:
    by_doc = {}
    for a in captured:
        assert "(doc " in a["text"], a["text"]
        by_doc[int(a["text"].split("(doc ")[1].split(")")[0])] = a
    return by_doc


# (model_args for both runs, tiny generation_config changes, expected dtype of both)
CASES = {
    # lmms-eval's defaults: frames at least 3136 pixels, at most 602112; the checkpoint's dtype (the tiny's float32);
    # max_num_frames 5: the long clip's 8 frames thinned to 5, an odd count (the processor repeats the last frame;
    # prism_mm builds that prefix in a row, not streamed), the short clip's 4 kept
    "qwen2_vl": ("max_num_frames=5", {}, "float32"),
    # its defaults: frames of at least 200704 pixels (the 168 x 112 clip upscaled); a repetition penalty in the
    # checkpoint's generation_config, which generate applies in greedy decoding (Qwen2.5-VL-7B-Instruct's is 1.05;
    # 1.3 changes the tiny model's answers, 1.05 does not)
    "qwen2_5_vl": (f"max_num_frames={FRAMES}", {"repetition_penalty": 1.3}, "bfloat16"),
    # fps given: 2 fps, at most max_num_frames; explicit pixel bounds; the task's qwen3_vl prompt
    "qwen3_vl": (f"max_num_frames={FRAMES},fps=2,min_pixels=12544,max_pixels=100352", {}, "bfloat16"),
}


@pytest.mark.parametrize("family", list(CASES))
def test_dense_run_feeds_what_lmms_evals_class_feeds(tmp_path, family):
    """The real lmms-eval CLI, the family's own class (--force_simple, CPU) then prism_qwen_vl attn=dense with its
    default preprocess=lmms_eval, same model_args: for every document the same prompt token ids, video grid, pixel
    values (per temporal patch, in the same dtype), MRoPE position ids, decoded token ids and answer; our stats say
    what made each answer (preprocessing, task prompt, system prompt, generation settings, visual tokens)."""
    args, generation, dtype = CASES[family]
    model = save_tiny(family, tmp_path / family)
    if generation:
        config = json.loads((model / "generation_config.json").read_text())
        (model / "generation_config.json").write_text(json.dumps({**config, **generation}))
    captures = {who: tmp_path / f"capture-{who}.jsonl" for who in ("lmms_eval", "prism")}
    stats = tmp_path / "stats"
    answers = {}
    for who, name, model_args in (("lmms_eval", family, f"pretrained={model},device=cpu,device_map=cpu,{args}"),
                                  ("prism", "prism_qwen_vl", f"pretrained={model},attn=dense,{args},stats_dir={stats}")):
        task_dir, docs = _task(tmp_path / who, captures[who])
        answers[who] = _run(name, model_args, task_dir, tmp_path / f"out-{who}", captures[who])
    theirs, ours = (_by_doc(lmms_capture.answers(captures[w])) for w in ("lmms_eval", "prism"))
    assert sorted(theirs) == sorted(ours) == list(range(len(docs)))
    lengths = set()
    for doc in range(len(docs)):
        t, o = theirs[doc], ours[doc]
        assert o["prompt"] == t["prompt"], f"doc {doc}: prompt ids differ"
        assert o["grid"] == t["grid"], f"doc {doc}: video grid {o['grid']} != {t['grid']}"
        assert o["patch_shas"] == t["patch_shas"] and o["dtype"] == t["dtype"] == f"torch.{dtype}", \
            f"doc {doc}: pixel values differ"
        assert o["positions"] == t["positions"], f"doc {doc}: position ids differ"
        assert o["decoded"] == t["decoded"], f"doc {doc}: decoded tokens differ"
        assert answers["prism"][doc] == answers["lmms_eval"][doc], f"doc {doc}: answers differ"
        lengths.add(o["grid"][0][0])
    assert len(lengths) == 2  # the short and the long clip were sampled to different frame counts

    records = [json.loads(line) for line in (stats / "samples-dense-rank0.jsonl").read_text().splitlines()]
    assert sorted(r["doc_id"] for r in records) == list(range(len(docs)))
    family_spec = parity.FAMILIES[family]
    for r in records:
        assert r["answer"] == answers["prism"][r["doc_id"]]
        assert (r["preprocess"], r["family"], r["dtype"]) == ("lmms_eval", family, dtype)
        assert r["task_prompt"] == family and r["system_prompt"] == parity.LMMS_EVAL_SYSTEM_PROMPT
        assert r["question"].startswith("Question: ") == (family == "qwen3_vl")  # the task's qwen3_vl entry
        assert r["sampling"]["sampler"] == "lmms_eval" and f"max_num_frames={r['sampling']['max_frames']}" in args
        assert r["visual_tokens"] == ours[r["doc_id"]]["prompt"].count(SPECIAL_TOKENS["<|video_pad|>"])
        assert r["streamed"] == (r["frames"] % 2 == 0)  # streamed in frame pairs; an odd count in a row
        g = r["generation"]
        assert g["max_new_tokens"] == 8 and g["greedy"] and not g["sampling_requested"]
        assert g["repetition_penalty"] == generation.get("repetition_penalty", 1.0)
        assert g["until"] == ([] if family_spec.drops_double_newline else ["\n\n"]) and g["stripped"] == family_spec.strips
    summary = json.loads((stats / "summary-dense-rank0.json").read_text())
    assert (summary["preprocess"], summary["task_prompt"], summary["dtype"]) == ("lmms_eval", family, dtype)
    assert summary["versions"] == parity.installed_versions()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_preprocess_qwen_feeds_what_qwen_vl_utils_gives(tmp_path, family):
    """prism_qwen_vl preprocess=qwen (attn=dense) answering a question about each clip: the same prompt ids, grid,
    pixel values, position ids and decoded tokens as transformers' generate on what qwen-vl-utils'
    process_vision_info (fps 2, max_frames, min_frames 4, the pixel bounds) and the processor (do_resize=False, the
    frames' metadata) give for the chat prompt without a system message, and its answer stripped."""
    import torch
    from qwen_vl_utils import process_vision_info
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from prism_mm.eval.model import PrismQwenVL

    model_dir = save_tiny(family, tmp_path / family)
    pixels = {"min_pixels": 12544, "max_pixels": 50176}
    clips = {name: make_demo_video(tmp_path / f"{name}.mp4", seconds=s, fps=8, height=112, width=168, seed=i)
             for i, (name, s) in enumerate(CLIPS.items())}
    question = "Which way does the red square move? (doc 0)"
    lm = PrismQwenVL(pretrained=str(model_dir), attn="dense", preprocess="qwen", max_num_frames=FRAMES,
                     stats_dir=str(tmp_path / "stats"), **pixels)
    assert lm.system_prompt is None and lm.video_options.sampler == "qwen" and lm.model.dtype == torch.float32
    processor = AutoProcessor.from_pretrained(model_dir)
    reference = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    patch = 16 if family == "qwen3_vl" else 14
    for name, clip in clips.items():
        ours_path, theirs_path = tmp_path / f"ours-{name}.jsonl", tmp_path / f"theirs-{name}.jsonl"
        with lmms_capture.capturing(ours_path):
            answer, _ = lm._ask(lm.session.load_video(str(clip), lm.video_options), question, {"max_new_tokens": 8})
        messages = [{"role": "user", "content": [
            {"type": "video", "video": str(clip), "fps": 2.0, "max_frames": FRAMES, "min_frames": 4, **pixels},
            {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        _, videos, video_kwargs = process_vision_info(messages, return_video_kwargs=True, return_video_metadata=True,
                                                      image_patch_size=patch)
        videos, metadata = zip(*videos)
        inputs = processor(text=[text], videos=list(videos), video_metadata=list(metadata), do_resize=False,
                           return_tensors="pt", **video_kwargs)
        with lmms_capture.capturing(theirs_path), torch.no_grad():
            out = reference.generate(**inputs, max_new_tokens=8, do_sample=False)
        expected = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
        (o,), (t,) = lmms_capture.answers(ours_path), lmms_capture.answers(theirs_path)
        assert o["prompt"] == t["prompt"] == inputs["input_ids"][0].tolist(), name
        assert o["grid"] == t["grid"] == inputs["video_grid_thw"].tolist(), name
        assert o["patch_shas"] == t["patch_shas"] and o["dtype"] == t["dtype"] == "torch.float32", name
        assert o["positions"] == t["positions"] and o["decoded"] == t["decoded"], name
        assert answer == expected, name


def test_model_args_lmms_evals_classes_refuse_or_we_cannot_honour(tmp_path):
    """A clear error, before the model loads, for what would make the run differ from lmms-eval's class: batch size
    > 1, interleave_visuals, use_cache=false, an fps or total_pixels that the family's class does not take (Qwen2.5-VL's
    takes fps and ignores it), enable_thinking outside Qwen3-VL; and an unknown preprocess."""
    from prism_mm.eval.model import PrismQwenVL

    model = str(save_tiny("qwen2_5_vl", tmp_path / "tiny"))
    for kwargs, message in (({"batch_size": 2}, r"runs batch_size=1, got 2"),
                            ({"interleave_visuals": "true"}, r"interleave_visuals=true: lmms-eval's classes"),
                            ({"use_cache": False}, r"use_cache=false: prism_qwen_vl decodes on the video's KV cache"),
                            ({"fps": 1}, r"lmms-eval's qwen2_5_vl class takes no fps"),
                            ({"total_pixels": 10**6}, r"takes no total_pixels"),
                            ({"enable_thinking": True}, r"takes no enable_thinking"),
                            ({"preprocess": "vllm"}, r"preprocess must be lmms_eval .* or qwen")):
        with pytest.raises(ValueError, match=message):
            PrismQwenVL(pretrained=model, stats_dir=str(tmp_path / "stats"), **kwargs)
