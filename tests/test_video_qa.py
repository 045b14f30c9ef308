"""Video pipeline and CLI on a generated clip with tiny random-weight Qwen-VL models."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("decord")
pytest.importorskip("qwen_vl_utils")

from prism_mm.pipelines.prefill import ChunkConfig  # noqa: E402
from prism_mm.pipelines.qa import VideoQA  # noqa: E402
from prism_mm.pipelines.record import RunRecord  # noqa: E402
from prism_mm.pipelines.session import VideoSession  # noqa: E402
from prism_mm.pipelines.video import VideoOptions, build_inputs, probe, sample_frames  # noqa: E402
from prism_mm.pipelines.video_qa import main  # noqa: E402
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


@pytest.mark.parametrize("model_type,kw", [
    ("qwen2_5_vl", dict(fps=2.0)), ("qwen2_5_vl", dict(fps=4.0, max_frames=6)),
    ("qwen2_5_vl", dict(fps=2.0, max_pixels=28 * 28 * 8, min_pixels=28 * 28 * 4)),
    ("qwen3_vl", dict(fps=4.0, total_pixels=32 * 32 * 24, min_pixels=32 * 32 * 2)),
    ("qwen2_5_vl", dict(fps=4.0, total_pixels=28 * 28 * 40, min_pixels=28 * 28)),
    ("qwen2_5_vl", dict(fps=3.0, start=1.0, end=3.5))])
def test_sampling_equals_qwen_vl_utils_fetch_video(clip, model_type, kw):
    """sample_frames reads and sizes the frames itself (to resize them where the processor runs): its frames are
    exactly fetch_video's (rounded to uint8 as the pipeline used them) and its metadata is fetch_video's."""
    from qwen_vl_utils import fetch_video

    from prism_mm.models import VL_PATCH_SIZES
    from prism_mm.pipelines.video import fetch_video_request

    opts = VideoOptions(**kw)
    (expected, expected_meta), _ = fetch_video(fetch_video_request(clip, opts),
                                               image_patch_size=VL_PATCH_SIZES[model_type],
                                               return_video_sample_fps=True, return_video_metadata=True)
    frames, meta, _ = sample_frames(clip, opts, model_type)
    assert frames.dtype == torch.uint8 and torch.equal(frames, expected.round().clamp(0, 255).to(torch.uint8))
    assert meta == {**expected_meta, "video_backend": meta["video_backend"]}
    assert meta["video_backend"] == "decord frame choice, parallel PyAV reader"


def test_resize_in_chunks_equals_one_resize(monkeypatch):
    """resize_frames resizes RESIZE_CHUNK frames at a time into one uint8 tensor: equal to one bicubic antialiased
    resize of all frames (qwen-vl-utils' filter), for a chunk size that does not divide the frame count."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    from prism_mm.pipelines import video

    frames = torch.randint(0, 256, (11, 3, 45, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(video, "RESIZE_CHUNK", 4)
    got = video.resize_frames(frames, (28, 56))
    expected = tvf.resize(frames, [28, 56], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert got.shape == (11, 3, 28, 56) and got.dtype == torch.uint8 and torch.equal(got, expected)


def test_inputs_count_visual_tokens(clip, tiny):
    from transformers import AutoConfig, AutoProcessor

    prepared = build_inputs(AutoProcessor.from_pretrained(tiny), AutoConfig.from_pretrained(tiny), clip, "What moves?",
                            VideoOptions(fps=2.0, max_frames=4))
    assert prepared.frames_used == 4 and prepared.visual_tokens > 0
    thw = prepared.inputs["video_grid_thw"][0].tolist()  # patches: (time, height, width)
    patch = AutoConfig.from_pretrained(tiny).vision_config.patch_size
    assert prepared.frame_size == (thw[2] * patch, thw[1] * patch)  # width x height, as tools print it
    assert prepared.total_tokens == prepared.inputs["input_ids"].shape[1] > prepared.visual_tokens


def test_inputs_made_on_a_device_are_the_cpu_inputs_there(clip, tiny):
    """build_inputs(device=...) has the video processor make the pixels on that device (the session passes its GPU):
    there they are (on a machine without CUDA: the meta device, shapes only), and on CUDA they equal the default
    (CPU) ones; the other tensors are the CPU's."""
    from transformers import AutoConfig, AutoProcessor

    processor, config = AutoProcessor.from_pretrained(tiny), AutoConfig.from_pretrained(tiny)
    opts = VideoOptions(fps=2.0, max_frames=4)
    device = "cuda" if torch.cuda.is_available() else "meta"
    cpu = build_inputs(processor, config, clip, "What moves?", opts).inputs
    there = build_inputs(processor, config, clip, "What moves?", opts, device=device).inputs
    pixels = there["pixel_values_videos"]
    assert there.keys() == cpu.keys() and pixels.device.type == device
    assert pixels.shape == cpu["pixel_values_videos"].shape and pixels.dtype == cpu["pixel_values_videos"].dtype
    if device == "cuda":  # the same float ops on another device
        assert torch.allclose(pixels.cpu(), cpu["pixel_values_videos"], rtol=1e-6, atol=1e-6)
    for key, value in cpu.items():
        if key != "pixel_values_videos":
            assert torch.equal(there[key].cpu(), value), key


@pytest.mark.parametrize("stream", [True, False])
def test_python_api_compare(clip, tiny, stream):
    """compare mode, streamed (the default) or in a row: both runs, their speed-up and the per-layer check."""
    from prism_mm import PrismConfig

    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(1.0)
    qa = VideoQA(tiny, attn="compare", prism=cfg, video=VideoOptions(fps=2.0, max_frames=4), max_new_tokens=4,
                 progress=False, **({} if stream else {"stream": False}))
    result = qa(clip, "Which way does the red square move?")
    assert result["streamed"] is stream and result["frames"] == 4 and result["video_seconds"] == pytest.approx(5.0)
    assert all(run["streamed"] is stream for run in result["runs"].values())
    assert set(result["runs"]) == {"dense", "prism"}
    assert result["answers_agree"]  # every block selected -> same greedy answer
    assert result["runs"]["prism"]["sparse_layers"] == 2 and result["runs"]["prism"]["mean_density"] == 1.0
    dense_s, prism_s = result["runs"]["dense"]["prefill_s"], result["runs"]["prism"]["prefill_s"]
    assert prism_s > 0 and result["prefill_speedup"] == pytest.approx(dense_s / prism_s)
    layers = result["layers_vs_dense"]  # the untimed check pass: every block kept -> dense output
    assert [row["layer"] for row in layers] == [0, 1]
    assert all(row["sparse"] and row["kept_blocks"] == row["total_blocks"] > 0 for row in layers)
    bound = 1e-5 if qa.model.dtype == torch.float32 else 2e-2  # fp32 on the CPU; bf16 on a GPU
    assert all(row["dense_rel_err"] < bound for row in layers)


def test_session_answers_into_one_record(clip, tiny):
    """A video loaded in each attention mode (in a row) and asked: RunRecords with the prefix's video fields, what
    Prism did while building it, the tower's share of the prefill, the same answer at thresholds 1.0; the record's
    times add up; set_attention refuses an unknown mode."""
    from prism_mm import PrismConfig

    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(1.0)
    session = VideoSession(tiny, cfg, device="cpu", attn="dense", stream=False)
    opts = VideoOptions(fps=2.0, max_frames=4)
    dense = session.load_video(clip, opts).ask("What moves?", 3)
    session.set_attention("prism")
    video = session.load_video(clip, opts)
    prism = video.ask("What moves?", 3)
    prefix = video.prefix_info
    assert isinstance(prism, RunRecord) and prism.attn == "prism" and dense.attn == "dense"
    assert (prism.frames, prism.visual_tokens, prism.prefix_tokens) == (4, prefix.visual_tokens, prefix.tokens)
    assert prism.total_tokens == prefix.tokens + prism.question_tokens and prism.question_tokens > 0
    assert prism.sparse_layers == prism.layers == 2 and prism.mean_density == 1.0 and prism.prefill_s > 0
    # in a row, the tower runs inside the prefill
    assert 0 < prism.vision_s < prism.prefill_s and 0 < dense.vision_s < dense.prefill_s
    assert not prism.streamed and not prism.reused and not dense.reused
    assert dense.mean_density == 1.0 and dense.sparse_layers == 0 and dense.answer == prism.answer
    assert prism.new_tokens == 3
    assert prism.question_s > 0 and prism.decode_s > 0
    assert json.loads(json.dumps(prism.to_dict()))["visual_tokens"] == prefix.visual_tokens
    with pytest.raises(ValueError, match="attn"):
        session.set_attention("sparse")


def test_front_ends_import_no_cli_module():
    """The pipelines (session, prefix, qa, record, report, ...) and the lmms-eval model are imported by front ends;
    none of them imports a CLI module."""
    import ast
    from pathlib import Path

    import prism_mm

    root = Path(prism_mm.__file__).parent
    clis = {"video_qa", "demo"}
    modules = [p for p in (root / "pipelines").glob("*.py") if p.stem not in clis]
    for path in [*modules, *(root / "eval").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [a.name for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not {part for n in names for part in n.split(".")} & clis, f"{path.name} imports a CLI module"


@pytest.mark.parametrize("attn,stream", [("prism", None), ("dense", None), ("compare", None), ("compare", False)])
def test_cli_json(clip, tiny, attn, stream, capsys):
    """--json for each mode; streamed by default, in a row with --no-stream."""
    code = main(["--video", clip, "--question", "What moves?", "--model", tiny, "--attn", attn, "--max-frames", "4",
                 "--max-new-tokens", "3", "--block-size", "16", "--min-sparse-len", "0", "--json", "--no-progress",
                 *([] if stream is None else ["--no-stream"])])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frames"] == 4 and result["visual_tokens"] > 0 and result["streamed"] is (stream is None)
    assert set(result["runs"]) == ({"dense", "prism"} if attn == "compare" else {attn})
    assert result["question"] == "What moves?" and result["reused"] is False


def readme_main_job() -> list[str]:
    """The video_qa arguments of README.md's first command (the main job), as a list."""
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "prism_mm.pipelines.video_qa" in ln and "setup.sh" in ln)
    return shlex.split(line.split("-m prism_mm.pipelines.video_qa", 1)[1])


def test_readme_main_job_shows_prism_running_sparse(clip):
    """README command 1, as written there (on the test clip): Prism selects and runs sparse on the CPU, the report
    gives kept blocks and the output error against dense per layer, and claims no CPU speed-up."""
    args = readme_main_job()
    args[args.index("--video") + 1] = clip
    proc = subprocess.run([sys.executable, "-m", "prism_mm.pipelines.video_qa", *args, "--max-new-tokens", "3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    sparse, layers = map(int, re.search(r"sparse in (\d+)/(\d+) layers", out).groups())
    assert sparse == layers == 2
    kept = [tuple(map(int, m)) for m in re.findall(r"kept (\d+)/(\d+) blocks", out)]
    assert len(kept) == 2 and all(0 < k < total for k, total in kept)  # really selecting: not every block
    errors = [float(e) for e in re.findall(r"rel\. error vs dense ([0-9.e+-]+)", out)]
    assert len(errors) == 2 and all(0 < e < 1 for e in errors)
    assert "prefill speed-up" not in out and "not a speed measure" in out


def test_cli_quiet_output_has_no_library_chatter(clip):
    """--no-progress leaves stderr free of qwen-vl-utils' backend line and progress bars."""
    proc = subprocess.run([sys.executable, "-m", "prism_mm.pipelines.video_qa", "--video", clip, "--question", "q",
                           "--model", "tiny-qwen2.5-vl", "--attn", "dense", "--max-frames", "4", "--max-new-tokens", "2",
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "qwen-vl-utils using" not in proc.stderr and "Loading weights" not in proc.stderr


def test_report_escapes_control_characters():
    """A random-weight answer such as 'J' + 127 x '\\x1c' is printed as escapes, not raw control bytes."""
    from prism_mm.pipelines.report import format_report, printable

    assert printable("J" + "\x1c" * 3 + "\nok\x1b[2J") == "J\\x1c\\x1c\\x1c\nok\\x1b[2J"
    report = format_report({"random_weights": True, "question": "q\x1b", "answer": "J" + "\x1c" * 127, "frames": 4,
                            "frame_size": [56, 28], "visual_tokens": 8, "total_tokens": 20, "device": "cpu",
                            "runs": {}})
    assert not any(ord(c) < 32 and c != "\n" for c in report) and "J\\x1c" in report


def test_report_compares_decoder_prefills_only_for_the_same_work():
    """On a GPU the compare report prints the decoder prefill's speed-up when the result has one, and says the
    prefills are not compared when VideoQA left it out (Prism's chunks ran inside the stream, dense's did not);
    same_decoder_work decides that."""
    from prism_mm.pipelines.record import same_decoder_work
    from prism_mm.pipelines.report import format_report

    base = {"random_weights": True, "question": "q", "answer": "a", "frames": 4, "frame_size": [56, 28],
            "visual_tokens": 8, "total_tokens": 20, "device": "NVIDIA H200", "runs": {}, "streamed": True,
            "vision_attention": "varlen", "first_token_speedup": 1.2, "answers_agree": True}
    assert "decoder prefill speed-up 3.00x, first token 1.20x sooner" in format_report({**base, "prefill_speedup": 3.0})
    report = format_report(base)
    assert "first token 1.20x sooner (decoder prefills not compared" in report and "prefill speed-up" not in report
    def record(**kw):
        return RunRecord(attn="prism", answer="", prefill_s=0.5, vision_s=None, decode_s=0.1, new_tokens=1,
                         mean_density=1.0, sparse_layers=0, **kw)

    one = record()
    assert same_decoder_work(one, record())
    pipelined, chunked_after = record(decoder_chunks=4, decoder_chunks_streamed=3), record(decoder_chunks=4)
    assert not same_decoder_work(one, pipelined) and not same_decoder_work(one, chunked_after)


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
        "threshold": ([clip, "--threshold", "1.5"], r"--threshold must be in \(0, 1\], got 1.5"),
        "max density": ([clip, "--max-density", "0"], r"--max-density must be in \(0, 1\]"),
        "cutoff": ([clip, "--method", "cutoff", "--cutoff", "1"], r"--cutoff must be in \(0, 1\), got 1"),
        "dense tail": ([clip, "--dense-tail", "-1"], r"--dense-tail must be an int >= 0"),
        "block size": ([clip, "--block-size", "48"], r"--block-size must be one of"),
        "max new tokens": ([clip, "--max-new-tokens", "0"], r"--max-new-tokens must be >= 1"),
        "device name": ([clip, "--device", "gpu"], r"--device 'gpu' is not one prism_mm runs on"),
        "device index": ([clip, "--device", "cuda:99"], r"--device 'cuda:99': this machine has"),
        "model file": ([clip, "--model", "README.md"], r"is a file, not a model directory"),
        "model dir": ([clip, "--model", "./no/such/dir"], r"does not exist"),
    }


BAD_INPUTS = ["missing", "not a video", "truncated", "empty", "time range", "bad range", "threshold", "max density",
              "cutoff", "dense tail", "block size", "max new tokens", "device name", "device index", "model file", "model dir"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_cli_bad_inputs_get_one_line_and_exit_2(case, clip, tmp_path, capsys, monkeypatch):
    import re

    from prism_mm.pipelines import session

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # README.md is a file here
    monkeypatch.setattr(session, "load_video_model", no_loading)
    args, pattern = _bad_inputs(tmp_path, clip)[case]
    model = [] if "--model" in args else ["--model", "tiny-qwen2.5-vl"]
    code = main(["--video", *args, "--question", "q", *model, "--no-progress"])
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


@pytest.mark.parametrize("case", ["not a video", "truncated"])
def test_cli_corrupt_video_prints_only_our_line(case, clip, tmp_path):
    """decord / ffmpeg log to file descriptor 2 from native code; none of that precedes our one-line error."""
    args, pattern = _bad_inputs(tmp_path, clip)[case]
    proc = subprocess.run([sys.executable, "-m", "prism_mm.pipelines.video_qa", "--video", *args, "--question", "q",
                           "--model", "tiny-qwen2.5-vl", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), proc.stderr


def test_check_device_names_the_fix(monkeypatch):
    """Device strings are checked against this machine: a bad name, no GPU, and an index past the GPU count."""
    from prism_mm.pipelines.session import check_device

    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not one prism_mm runs on"):
        check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match=r"has 1 CUDA GPU\(s\), cuda:0..cuda:0"):
        check_device("cuda:1")


def test_streamed_prefix_answers_as_the_unstreamed_one(clip, tiny):
    """A prefix built streamed (the video decoded while the tower runs, the decoder chunks pipelined behind it) gives
    the answer and token counts of one built in a row (thresholds 1.0), and its record says the tower ran inside
    video_s."""
    from prism_mm import PrismConfig

    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(1.0)
    opts = VideoOptions(fps=2.0, max_frames=6)
    plain = VideoSession(tiny, cfg, device="cpu", stream=False).load_video(clip, opts).ask("What moves?", 4)
    streamed = VideoSession(tiny, cfg, device="cpu").load_video(clip, opts).ask("What moves?", 4)
    assert streamed.streamed and not plain.streamed and streamed.answer == plain.answer
    assert (streamed.frames, streamed.visual_tokens, streamed.total_tokens) == \
        (plain.frames, plain.visual_tokens, plain.total_tokens) == (6, plain.visual_tokens, plain.total_tokens)
    assert streamed.sparse_layers == streamed.layers == 2 and streamed.mean_density == 1.0
    assert 0 < streamed.vision_s < streamed.video_s
    assert streamed.first_token_s == pytest.approx(streamed.video_s + streamed.prefill_s + streamed.question_s)


def test_streamed_chunked_session_pipelines_the_decoder_and_answers_as_unchunked(clip, tiny, capsys):
    """A session with decoder chunks streams with the prefill pipelined (stream_prefill): the answer of the
    unchunked prefix built in a row (thresholds 1.0), the chunks counted in the record, and the CLI's report says
    so."""
    from prism_mm import PrismConfig
    from prism_mm.pipelines.prefill import ChunkConfig

    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(1.0)
    opts = VideoOptions(fps=2.0, max_frames=6)
    plain = VideoSession(tiny, cfg, device="cpu", stream=False).load_video(clip, opts).ask("What moves?", 4)
    session = VideoSession(tiny, cfg, device="cpu", chunks=ChunkConfig(decoder_tokens=48, vision_frames=1))
    streamed = session.load_video(clip, opts).ask("What moves?", 4)
    assert streamed.streamed and streamed.answer == plain.answer
    assert streamed.decoder_chunks == -(-plain.prefix_tokens // 48) > 1
    # one pair per tower call (vision_frames): chunks run between them; those after the last are prefill_s
    assert 1 <= streamed.decoder_chunks_streamed < streamed.decoder_chunks and streamed.prefill_s > 0
    code = main(["--video", clip, "--question", "What moves?", "--model", tiny, "--max-frames", "4",
                 "--max-new-tokens", "2", "--block-size", "16", "--min-sparse-len", "0", "--threshold", "1.0",
                 "--chunk-tokens", "48", "--vision-chunk-frames", "1", "--no-progress"])
    assert code == 0 and re.search(r"vision tower and \d+ of \d+ decoder chunks ran", capsys.readouterr().out)


def test_warm_up_reads_no_file_and_changes_no_answer(clip, tiny, monkeypatch):
    """VideoSession.warm_up (run once by VideoQA at construction on a GPU) runs on black stand-in frames: the file's
    frames are read only by the prefix build, the session's attention is as before, and the answer is that of a
    session that did not warm up. (Smaller stand-ins than the GPU's, for the CPU: 2 frame pairs, Prism's kernels at the
    chunk shapes of prompts up to 192 tokens.)"""
    from prism_mm import PrismConfig
    from prism_mm.pipelines import session as session_module
    from prism_mm.pipelines import stream

    reads = []
    real = stream.read_sampled
    monkeypatch.setattr(stream, "read_sampled", lambda *a, **k: reads.append(1) or real(*a, **k))
    monkeypatch.setattr(session_module, "WARMUP_PAIRS", 2)
    monkeypatch.setattr(session_module, "WARMUP_SIDE", 112)
    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(1.0)
    opts = VideoOptions(fps=2.0, max_frames=6)
    chunks = ChunkConfig(decoder_tokens=64)
    cold = VideoSession(tiny, cfg, device="cpu", stream_chunks=chunks).load_video(clip, opts).ask("What moves?", 4)
    assert len(reads) == 1
    session = VideoSession(tiny, cfg, device="cpu", stream_chunks=chunks)
    assert session.warm_up(max_tokens=192) > 0 and session.attn == "prism" and len(reads) == 1
    warm = session.load_video(clip, opts).ask("What moves?", 4)
    assert len(reads) == 2 and warm.answer == cold.answer and warm.new_tokens == cold.new_tokens
    assert not warm.reused and warm.layers == cold.layers == 2


def test_streamed_compare_checks_layers_against_dense_as_the_unstreamed_one(clip, tiny):
    """VideoQA(stream=True) in compare mode reports the per-layer check against dense, made over the streamed
    features: the same layers, kept blocks and (to 1e-4) errors as the unstreamed comparison's check."""
    from prism_mm import PrismConfig

    cfg = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0).with_threshold(0.6)
    opts = VideoOptions(fps=2.0, max_frames=6)
    plain = VideoQA(tiny, "compare", cfg, opts, max_new_tokens=2, device="cpu", progress=False,
                    stream=False)(clip, "What moves?")
    streamed = VideoQA(tiny, "compare", cfg, opts, max_new_tokens=2, device="cpu", progress=False)(clip, "What moves?")
    assert not plain["streamed"] and streamed["streamed"]
    rows, expected = streamed["layers_vs_dense"], plain["layers_vs_dense"]
    assert len(rows) == len(expected) == 2 and all(r["sparse"] for r in expected)
    assert any(r["kept_blocks"] < r["total_blocks"] for r in expected)  # a check with something dropped
    for got, want in zip(rows, expected):
        assert (got["layer"], got["kept_blocks"], got["total_blocks"]) == \
            (want["layer"], want["kept_blocks"], want["total_blocks"])
        assert got["dense_rel_err"] == pytest.approx(want["dense_rel_err"], rel=1e-4, abs=1e-7)
        assert "layers_vs_dense" not in streamed["runs"]["prism"]


def test_unstreamable_video_runs_in_a_row(clip, tiny, monkeypatch):
    """Where stream_video refuses a video before any work (StreamingUnavailable: no decord, an odd frame count),
    VideoQA and VideoSession.load_video build its prefix in a row: the same answer, recorded as not streamed."""
    from prism_mm.pipelines import session as session_module
    from prism_mm.pipelines.stream import StreamingUnavailable

    opts = VideoOptions(fps=2.0, max_frames=4)
    qa = VideoQA(tiny, "prism", video=opts, max_new_tokens=3, device="cpu", progress=False)
    streamed = qa(clip, "What moves?")

    def refuse(*args, **kwargs):
        raise StreamingUnavailable("5 frames sampled: streaming takes frame pairs; run without streaming")

    monkeypatch.setattr(session_module, "stream_video", refuse)
    monkeypatch.setattr(session_module, "stream_prefill", refuse)  # the default stream pipelines the decoder
    qa.session.prefixes.clear()  # build the prefix again (a kept one would answer)
    in_a_row = qa(clip, "What moves?")
    assert streamed["streamed"] and not in_a_row["streamed"] and in_a_row["answer"] == streamed["answer"]
    assert not in_a_row["reused"]
    assert in_a_row["visual_tokens"] == streamed["visual_tokens"] and in_a_row["frame_size"] == streamed["frame_size"]
    qa.session.prefixes.clear()
    record = qa.session.load_video(clip, opts).ask("What moves?", max_new_tokens=3)
    assert not record.streamed and not record.reused and record.answer == streamed["answer"]


def test_cli_stream_compare_reports_the_streamed_stage(clip, tiny, capsys):
    code = main(["--video", clip, "--question", "What moves?", "--model", tiny, "--attn", "compare", "--max-frames",
                 "4", "--max-new-tokens", "3", "--block-size", "16", "--min-sparse-len", "0", "--threshold", "1.0",
                 "--stream", "--decode-workers", "2", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("video decoded while the vision tower ran") == 2 and "answers agree: True" in out
    assert "not a speed measure" in out and "per decoder layer of the video prefix, Prism against dense" in out


def test_cli_decode_workers_checked(clip, capsys):
    code = main(["--video", clip, "--question", "q", "--model", "tiny-qwen2.5-vl", "--decode-workers", "0"])
    assert code == 2 and capsys.readouterr().err.strip() == "error: --decode-workers must be >= 1, got 0"


def test_cli_decoders_flag_picks_processes_or_threads(clip, tiny, monkeypatch, capsys):
    """--decoders processes reads the frames in decoder processes even in a row (auto reads them in threads there);
    --decoders threads never starts a process."""
    from prism_mm.pipelines import frames as reader

    calls = []
    real = reader._read_in_processes
    monkeypatch.setattr(reader, "_read_in_processes", lambda *a: calls.append(a[3]) or real(*a))
    base = ["--video", clip, "--question", "What moves?", "--model", tiny, "--max-frames", "4", "--max-new-tokens",
            "2", "--no-stream", "--decode-workers", "2", "--no-progress", "--json"]
    assert main(base) == 0 and calls == []
    assert main(base + ["--decoders", "processes"]) == 0 and calls == [2]
    assert main(base + ["--decoders", "threads"]) == 0 and calls == [2]
    capsys.readouterr()


def test_cli_stream_chunk_tokens_pipelines_the_default_stream(clip, tiny, capsys):
    """The default stream pipelines the decoder in chunks (--stream-chunk-tokens, 8192 by default): chunks of 16
    tokens give several decoder chunks and, at thresholds 1.0, the answer of one pass after the stream
    (--stream-chunk-tokens 0); in compare mode the dense run takes one pass and the Prism run the chunks; a negative
    value is refused with exit code 2."""
    import json

    base = ["--video", clip, "--question", "What moves?", "--model", tiny, "--max-frames", "4", "--max-new-tokens",
            "3", "--block-size", "16", "--min-sparse-len", "0", "--threshold", "1.0", "--no-progress", "--json"]
    results = {}
    for tokens in ("16", "0"):
        assert main(base + ["--stream-chunk-tokens", tokens]) == 0
        results[tokens] = json.loads(capsys.readouterr().out)
    assert results["16"]["streamed"] and results["0"]["streamed"]
    chunks = {k: r["runs"]["prism"]["decoder_chunks"] for k, r in results.items()}
    assert chunks["16"] > 1 and chunks["0"] == 1, chunks
    assert results["16"]["answer"] == results["0"]["answer"]
    # dense runs stream with one decoder pass (SDPA's masked chunks are slower than one pass); Prism's pipelines
    assert main(base + ["--stream-chunk-tokens", "16", "--attn", "compare"]) == 0
    compared = json.loads(capsys.readouterr().out)
    runs = compared["runs"]
    assert runs["dense"]["decoder_chunks"] == 1 and runs["prism"]["decoder_chunks"] == chunks["16"]
    # Prism's chunks ran partly inside the stream: its prefill_s is not the same work as dense's one pass
    assert runs["prism"]["decoder_chunks_streamed"] >= 1 and "prefill_speedup" not in compared
    assert compared["first_token_speedup"] > 0
    assert main(base + ["--stream-chunk-tokens", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --stream-chunk-tokens must be >= 0 (0: one pass), got -1"


def count_prefix_builds(monkeypatch) -> list[str]:
    """Spy on VideoSession._build (decode, tower, decoder prefill of a video's prefix): the attention of each build."""
    builds = []
    real = VideoSession._build

    def spied(self, *args, **kwargs):
        builds.append(self.attn)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(VideoSession, "_build", spied)
    return builds


QUESTIONS = ["What moves?", "What colour is the disc?", "What moves?"]
CLI_BASE = ["--max-frames", "4", "--max-new-tokens", "3", "--block-size", "16", "--min-sparse-len", "0",
            "--threshold", "1.0", "--no-progress"]


@pytest.mark.parametrize("attn", ["prism", "compare"])
def test_cli_several_questions_answered_from_one_prefix(clip, tiny, attn, monkeypatch, capsys):
    """--question three times, --json: a list of three results in the order asked; the video's prefix is built once
    per attention mode, the second and third answers are marked reused (in every mode) and each first token is then
    its question's chunk alone; the same question asked again gets the same answer; compare mode compares each."""
    builds = count_prefix_builds(monkeypatch)
    asked = [arg for q in QUESTIONS for arg in ("--question", q)]
    code = main(["--video", clip, *asked, "--model", tiny, "--attn", attn, *CLI_BASE, "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    modes = ["dense", "prism"] if attn == "compare" else ["prism"]
    assert sorted(builds) == modes
    assert isinstance(results, list) and [r["question"] for r in results] == QUESTIONS
    assert [r["reused"] for r in results] == [False, True, True]
    for r in results:
        assert sorted(r["runs"]) == modes
        assert [run["reused"] for run in r["runs"].values()] == [r["reused"]] * len(modes)
    for r in results[1:]:
        for run in r["runs"].values():
            assert run["video_s"] == run["prefill_s"] == 0 and run["first_token_s"] == run["question_s"]
    assert results[2]["answer"] == results[0]["answer"]
    if attn == "compare":
        assert all(r["answers_agree"] for r in results)  # thresholds 1.0


def test_cli_several_questions_report_each(clip, capsys, monkeypatch):
    """The text report of several questions in compare mode: the first question's full report, then each later
    question with its answer, each mode's reused-prefix timing line and whether the answers agree."""
    builds = count_prefix_builds(monkeypatch)
    asked = [arg for q in QUESTIONS for arg in ("--question", q)]
    code = main(["--video", clip, *asked, "--model", "tiny-qwen2.5-vl", "--attn", "compare", *CLI_BASE])
    out = capsys.readouterr().out
    assert code == 0 and sorted(builds) == ["dense", "prism"]
    assert f"question: {QUESTIONS[0]}" in out
    assert f"question 2: {QUESTIONS[1]}" in out and f"question 3: {QUESTIONS[2]}" in out
    assert out.count("answer: ") == 3 and out.count("answers agree: ") == 3
    assert out.count("video prefix reused") == 4  # questions 2 and 3, in each mode
    assert out.count("video decoded while the vision tower") == 2  # question 1's two prefixes


def test_cli_chat_over_stdin(clip):
    """--chat --json, two lines on standard input (the same question twice): one JSON line per turn, in order; the
    second answered from the kept prefix (reused) with the first turn in its prompt (more tokens than the first)."""
    proc = subprocess.run([sys.executable, "-m", "prism_mm.pipelines.video_qa", "--video", clip, "--chat", "--json",
                           "--model", "tiny-qwen2.5-vl", *CLI_BASE], input="What moves?\nWhat moves?\n",
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    turns = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(t["turn"], t["question"]) for t in turns] == [(1, "What moves?"), (2, "What moves?")]
    assert [t["reused"] for t in turns] == [False, True]
    assert turns[1]["total_tokens"] > turns[0]["total_tokens"]


def test_cli_chat_opens_with_questions_and_ends_at_an_empty_line(clip, monkeypatch, capsys):
    """--chat with --question: the given questions open the conversation, then standard input's lines up to the
    first empty one (the lines after it are not read as questions); each turn's answer printed, the video's prefix
    built once."""
    import io

    builds = count_prefix_builds(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What moves?\n\nWhat colour is the disc?\n"))
    code = main(["--video", clip, "--chat", "--question", "Which way?", "--model", "tiny-qwen2.5-vl", *CLI_BASE])
    out = capsys.readouterr().out
    assert code == 0 and builds == ["prism"]
    assert "question 1: Which way?" in out and "question 2: What moves?" in out and "question 3" not in out
    assert "What colour" not in out and out.count("answer: ") == 2
    assert out.count("video prefix reused") == 1


@pytest.mark.parametrize("args,message", [
    ([], "error: no question: give --question TEXT (several times for several questions) or --chat "
         "(questions from standard input, one per line)"),
    (["--chat", "--attn", "compare"], "error: --chat answers in one attention mode: use --attn prism or --attn dense "
                                      "(--attn compare answers --question)")])
def test_cli_without_a_question_exits_2(clip, args, message, monkeypatch, capsys):
    """Neither --question nor --chat (or --chat in compare mode): one line naming the fix, exit code 2, before any
    model is loaded."""
    from prism_mm.pipelines import session

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(session, "load_video_model", no_loading)
    code = main(["--video", clip, "--model", "tiny-qwen2.5-vl", *args, "--no-progress"])
    assert code == 2 and capsys.readouterr().err.strip() == message
