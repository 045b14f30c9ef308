"""Video pipeline and CLI on a generated clip with tiny random-weight Qwen-VL models."""
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("decord")
pytest.importorskip("qwen_vl_utils")

from prism_mm.pipelines.session import RunRecord, VideoSession  # noqa: E402
from prism_mm.pipelines.video import VideoOptions, build_inputs, probe, sample_frames  # noqa: E402
from prism_mm.pipelines.video_qa import VideoQA, main  # noqa: E402
from prism_mm.testing.clips import make_demo_video  # noqa: E402
from prism_mm.testing.tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(make_demo_video(tmp_path_factory.mktemp("video") / "demo.mp4", seconds=5, fps=8, height=112, width=168))


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny(request, tmp_path_factory):
    return str(save_tiny(request.param, tmp_path_factory.mktemp(request.param)))


def test_probe_reads_metadata(clip):
    info = probe(clip)
    assert (info.frames, info.fps, info.width, info.height, info.backend) == (40, 8.0, 168, 112, "decord")
    assert info.duration == pytest.approx(5.0)


@pytest.mark.parametrize("fps,max_frames,expected", [(2.0, None, 10), (4.0, 6, 6), (1.0, None, 4)])
def test_sampling_obeys_fps_and_max_frames(clip, fps, max_frames, expected):
    frames, meta, _ = sample_frames(clip, VideoOptions(fps=fps, max_frames=max_frames), "qwen2_5_vl")
    assert frames.shape[0] == expected and frames.dtype == torch.uint8
    assert len(meta["frames_indices"]) == expected


def test_sampling_obeys_pixel_limits_and_time_range(clip):
    frames, _, _ = sample_frames(clip, VideoOptions(fps=2.0, max_pixels=28 * 28 * 8, min_pixels=28 * 28 * 4), "qwen2_5_vl")
    h, w = frames.shape[-2:]
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 28 * 28 * 8
    frames16, _, _ = sample_frames(clip, VideoOptions(fps=2.0, max_pixels=32 * 32 * 8, min_pixels=32 * 32 * 4), "qwen3_vl")
    assert frames16.shape[-1] % 32 == 0
    budget = 28 * 28 * 4 * 6
    frames_b, _, _ = sample_frames(clip, VideoOptions(fps=4.0, total_pixels=budget, min_pixels=28 * 28 * 2), "qwen2_5_vl")
    assert frames_b.shape[-1] * frames_b.shape[-2] <= max(budget / frames_b.shape[0] * 2, 28 * 28 * 2 * 1.05)
    part, meta, _ = sample_frames(clip, VideoOptions(fps=2.0, start=1.0, end=3.0), "qwen2_5_vl")
    assert all(8 <= i <= 24 for i in meta["frames_indices"]) and part.shape[0] == 4


def test_inputs_count_visual_tokens(clip, tiny):
    from transformers import AutoConfig, AutoProcessor

    prepared = build_inputs(AutoProcessor.from_pretrained(tiny), AutoConfig.from_pretrained(tiny), clip, "What moves?",
                            VideoOptions(fps=2.0, max_frames=4))
    assert prepared.frames_used == 4 and prepared.visual_tokens > 0
    assert prepared.total_tokens == prepared.inputs["input_ids"].shape[1] > prepared.visual_tokens


def test_python_api_compare(clip, tiny):
    from prism_mm import PrismConfig

    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(1.0)
    qa = VideoQA(tiny, attn="compare", prism=cfg, video=VideoOptions(fps=2.0, max_frames=4), max_new_tokens=4,
                 progress=False)
    result = qa(clip, "Which way does the red square move?")
    assert set(result["runs"]) == {"dense", "prism"}
    assert result["answers_agree"]  # every block selected -> same greedy answer
    assert result["runs"]["prism"]["sparse_layers"] == 2 and result["runs"]["prism"]["mean_density"] == 1.0
    assert result["runs"]["prism"]["prefill_s"] > 0 and result["prefill_speedup"] > 0


def test_session_runs_into_one_record(clip, tiny):
    from prism_mm import PrismConfig

    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(1.0)
    session = VideoSession(tiny, cfg, device="cpu", attn="dense")
    prepared = session.prepare(clip, "What moves?", VideoOptions(fps=2.0, max_frames=4))
    dense, prism = session.run(prepared, "dense", 3), session.run(prepared, "prism", 3)
    assert isinstance(prism, RunRecord) and session.attn == "prism"
    assert (prism.frames, prism.visual_tokens, prism.total_tokens) == (4, prepared.visual_tokens, prepared.total_tokens)
    assert prism.sparse_layers == prism.layers == 2 and prism.mean_density == 1.0 and prism.prefill_s > 0
    assert dense.mean_density == 1.0 and dense.sparse_layers == 0 and dense.answer == prism.answer
    assert prism.new_tokens == 3 and prism.total_s == pytest.approx(prism.prefill_s + prism.decode_s)
    bare = session.run(prepared.inputs, max_new_tokens=2)  # a plain inputs dict: no video fields
    assert bare.attn == "prism" and bare.frames is None and "frames" not in bare.to_dict(video=False)
    assert json.loads(json.dumps(prism.to_dict()))["visual_tokens"] == prepared.visual_tokens
    with pytest.raises(ValueError, match="attn"):
        session.run(prepared, "sparse", 1)


def test_front_ends_import_no_cli_module():
    """The session and the lmms-eval model are imported by front ends; none of them imports a CLI module."""
    import ast
    from pathlib import Path

    import prism_mm

    root = Path(prism_mm.__file__).parent
    clis = {"video_qa", "demo"}
    for path in [root / "pipelines" / "session.py", root / "pipelines" / "video.py", *(root / "eval").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [a.name for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not {part for n in names for part in n.split(".")} & clis, f"{path.name} imports a CLI module"


@pytest.mark.parametrize("attn", ["prism", "dense", "compare"])
def test_cli_json(clip, tiny, attn, capsys):
    code = main(["--video", clip, "--question", "What moves?", "--model", tiny, "--attn", attn, "--max-frames", "4",
                 "--max-new-tokens", "3", "--block-size", "16", "--min-sparse-len", "0", "--json", "--no-progress"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frames"] == 4 and result["visual_tokens"] > 0
    assert set(result["runs"]) == ({"dense", "prism"} if attn == "compare" else {attn})


def test_cli_subprocess_end_to_end(clip, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "prism_mm.pipelines.video_qa", "--video", clip, "--question", "What moves?",
         "--model", "tiny-qwen2.5-vl", "--attn", "compare", "--max-frames", "4", "--max-new-tokens", "3",
         "--min-sparse-len", "0", "--block-size", "32"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prefill speed-up" in proc.stdout and "answer:" in proc.stdout


def _bad_inputs(tmp_path, clip):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(open(clip, "rb").read()[:600])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    return {
        "missing": ([str(tmp_path / "nope.mp4")], "not found"),
        "not a video": ([str(text)], "cannot decode"),
        "truncated": ([str(truncated)], "cannot decode|no decodable frames"),
        "empty": ([str(empty)], "empty"),
        "time range": ([clip, "--start", "30"], "past the end"),
        "bad range": ([clip, "--start", "3", "--end", "2"], "before end"),
        "threshold": ([clip, "--threshold", "1.5"], r"threshold_\w+ must be in \(0, 1\]"),
    }


@pytest.mark.parametrize("case", ["missing", "not a video", "truncated", "empty", "time range", "bad range", "threshold"])
def test_cli_bad_video_inputs(case, clip, tmp_path, capsys):
    import re

    args, pattern = _bad_inputs(tmp_path, clip)[case]
    code = main(["--video", *args, "--question", "q", "--model", "tiny-qwen2.5-vl", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err


def test_cli_bad_models(clip, tmp_path, capsys):
    code = main(["--video", clip, "--question", "q", "--model", "no-such-org/no-such-model-xyz", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not available offline" in err and len(err.strip().splitlines()) == 1
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=64,
                vocab_size=300).save_pretrained(tmp_path / "llama")
    code = main(["--video", clip, "--question", "q", "--model", str(tmp_path / "llama"), "--random-weights",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Qwen2-VL" in err
