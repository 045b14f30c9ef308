"""Streamed video prefill (pipelines.stream): decoding overlapped with the processor and the vision tower gives the
features, prompt and answer of sample_frames + the processor + the tower in one call."""

import numpy as np
import pytest
import torch
from conftest import rel_err

pytest.importorskip("decord")
pytest.importorskip("av")
pytest.importorskip("qwen_vl_utils")

from prism_mm import PrismConfig, load_model  # noqa: E402
from prism_mm.pipelines import stream  # noqa: E402
from prism_mm.pipelines.prefill import (  # noqa: E402
    ChunkConfig,
    _vision_features,
    chunked_prefill,
    greedy_decode,
)
from prism_mm.pipelines.video import (  # noqa: E402
    VideoError,
    VideoOptions,
    build_inputs,
    prompt_inputs,
    sample_frames,
)
from prism_mm.testing.clips import make_h264_clip  # noqa: E402
from prism_mm.testing.tiny import save_tiny  # noqa: E402

ALL_BLOCKS = PrismConfig(block_size=16, min_sparse_len=0).with_threshold(1.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):  # 96 frames at 24 fps, a key frame every 12: at 4 fps, 16 frames (8 pairs) in 8 GOPs
    return str(make_h264_clip(tmp_path_factory.mktemp("stream") / "clip.mp4", frames=96, fps=24, gop=12,
                              width=112, height=84))


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny(request, tmp_path_factory):
    path = save_tiny(request.param, tmp_path_factory.mktemp(request.param))
    model, processor = load_model(str(path), attn="prism", prism=ALL_BLOCKS, dtype="float32", device_map="cpu")
    return model, processor


def _assert_features_close(got, got_deep, feats, deep):
    """The streamed features (and Qwen3-VL's deepstack features) within 1e-5 of the whole-video tower call's."""
    assert got.shape == feats.shape and rel_err(got, feats) < 1e-5
    assert (got_deep is None) == (deep is None)
    for a, b in zip(got_deep or [], deep or []):
        assert a.shape == b.shape and rel_err(a, b) < 1e-5


@pytest.mark.parametrize("batch_pairs,reader", [(1, "parallel"), (3, "parallel"), (16, "parallel"), (3, "decord")])
def test_streamed_features_and_prompt_equal_the_whole_video_path(clip, tiny, batch_pairs, reader):
    """Features (and Qwen3-VL's deepstack features) of the streamed tower calls, gathered in patch order, equal one
    tower call over build_inputs' pixels; the prompt tensors equal build_inputs' but for the pixel values."""
    model, processor = tiny
    opts = VideoOptions(fps=4.0, reader=reader, decode_workers=4)
    whole = build_inputs(processor, model.config, clip, "What moves?", opts)
    with torch.no_grad():
        feats, deep = _vision_features(model, whole.inputs["pixel_values_videos"], whole.inputs["video_grid_thw"], None)
    (got, got_deep), prepared = stream.stream_video(model, processor, clip, "What moves?", opts,
                                                    batch_pairs=batch_pairs)
    assert prepared.frames_used == whole.frames_used == 16
    assert (prepared.visual_tokens, prepared.total_tokens) == (whole.visual_tokens, whole.total_tokens)
    assert set(prepared.inputs) == set(whole.inputs) - {"pixel_values_videos"}
    for key, value in prepared.inputs.items():
        assert torch.equal(value, whole.inputs[key]), key
    _assert_features_close(got, got_deep, feats, deep)


def test_streamed_prefill_answers_as_generate(clip, tiny):
    """chunked_prefill over the streamed features + greedy decoding gives model.generate's tokens on build_inputs'
    tensors (thresholds 1.0)."""
    model, processor = tiny
    opts = VideoOptions(fps=4.0)
    whole = build_inputs(processor, model.config, clip, "What moves?", opts)
    with torch.no_grad():
        expected = model.generate(**whole.inputs, max_new_tokens=4, do_sample=False)[:, whole.total_tokens:]
    features, prepared = stream.stream_video(model, processor, clip, "What moves?", opts, batch_pairs=2)
    state = chunked_prefill(model, prepared.inputs, ChunkConfig(decoder_tokens=prepared.total_tokens), features)
    tokens = greedy_decode(model, state, max_new_tokens=4, eos_token_id=-1)
    assert torch.equal(tokens, expected)


@pytest.mark.parametrize("batch_pairs", [1, 3])
def test_pipelined_prefill_runs_chunks_while_the_tower_still_has_pairs_and_answers_as_generate(
        clip, tiny, batch_pairs, monkeypatch):
    """stream_prefill: decoder chunks run as soon as the video features they read have landed, between tower calls
    (a chunk runs before the tower's last call), and the finished prefill + greedy decoding gives model.generate's
    tokens on build_inputs' tensors (thresholds 1.0); the features equal the whole-video tower call's."""
    model, processor = tiny
    opts = VideoOptions(fps=4.0)
    whole = build_inputs(processor, model.config, clip, "What moves?", opts)
    with torch.no_grad():
        expected = model.generate(**whole.inputs, max_new_tokens=4, do_sample=False)[:, whole.total_tokens:]
        feats, _ = _vision_features(model, whole.inputs["pixel_values_videos"], whole.inputs["video_grid_thw"], None)
    events = []
    tower, step = stream._tower, stream.ChunkedPrefill.step
    monkeypatch.setattr(stream, "_tower", lambda *a: events.append("tower") or tower(*a))
    monkeypatch.setattr(stream.ChunkedPrefill, "step", lambda self, *a: events.append("chunk") or step(self, *a))
    chunk = max(16, whole.visual_tokens // 5)
    prefill, (got, got_deep), prepared = stream.stream_prefill(model, processor, clip, "What moves?", opts,
                                                        ChunkConfig(decoder_tokens=chunk), batch_pairs=batch_pairs)
    assert rel_err(got, feats) < 1e-5
    last_tower = len(events) - 1 - events[::-1].index("tower")
    assert "chunk" in events[:last_tower], events  # a chunk ran while pairs were still to go through the tower
    assert 0 < prefill.next < len(prefill.bounds)  # the chunks after the last tower call are the caller's
    while not prefill.done:
        prefill.step(got, got_deep)
    tokens = greedy_decode(model, prefill.state(), max_new_tokens=4, eos_token_id=-1)
    assert torch.equal(tokens, expected)
    assert prepared.total_tokens == whole.total_tokens


def test_a_pipelined_stream_decodes_in_processes(clip, tiny, monkeypatch):
    """VideoOptions.decode_processes=None: the pipelined stream's parallel reader decodes in processes (its calling
    thread launches the decoder's chunks while frames decode: no GIL shared with the decoders), the plain stream's in
    threads; True / False choose either for both."""
    from prism_mm.pipelines import frames as reader

    model, processor = tiny
    calls = []
    real = reader._read_in_processes
    monkeypatch.setattr(reader, "_read_in_processes", lambda *a: calls.append(a[3]) or real(*a))

    def pipelined(**kw):
        stream.stream_prefill(model, processor, clip, "What moves?", VideoOptions(fps=4.0, decode_workers=3, **kw),
                              ChunkConfig(decoder_tokens=16), batch_pairs=1)

    def plain(**kw):
        stream.stream_video(model, processor, clip, "What moves?", VideoOptions(fps=4.0, decode_workers=3, **kw))

    pipelined()
    assert calls == [3]
    plain()
    pipelined(decode_processes=False)
    assert calls == [3]
    plain(decode_processes=True)
    assert calls == [3, 3]


def test_stand_in_stream_decodes_nothing_and_gives_black_frames_features(clip, tiny, monkeypatch):
    """stand_in=True (the streamed warm-up) never reads the file's frames; its prompt tensors are the real run's
    and its features those of one tower call over black frames of the sampled count and size."""
    model, processor = tiny
    opts = VideoOptions(fps=4.0)
    frames, meta, _ = sample_frames(clip, opts, model.config.model_type)
    whole = build_inputs(processor, model.config, clip, "What moves?", opts)
    black = prompt_inputs(processor, torch.zeros_like(frames), meta, clip, "What moves?", None)
    with torch.no_grad():
        feats, deep = _vision_features(model, black["pixel_values_videos"], black["video_grid_thw"], None)

    def no_reading(*args, **kwargs):
        raise AssertionError("the stand-in stream read the file's frames")

    monkeypatch.setattr(stream, "read_sampled", no_reading)
    (got, got_deep), prepared = stream.stream_video(model, processor, clip, "What moves?", opts, batch_pairs=3,
                                                    stand_in=True)
    for key, value in prepared.inputs.items():
        assert torch.equal(value, whole.inputs[key]), key
    _assert_features_close(got, got_deep, feats, deep)


def test_streaming_refuses_bad_input(clip, tiny, tmp_path):
    model, processor = tiny
    with pytest.raises(ValueError, match="batch_pairs must be an int >= 1"):
        stream.stream_video(model, processor, clip, "q", VideoOptions(), batch_pairs=0)
    with pytest.raises(VideoError, match="video not found"):
        stream.stream_video(model, processor, str(tmp_path / "nope.mp4"), "q", VideoOptions())
    with pytest.raises(VideoError, match="past the end"):
        stream.stream_video(model, processor, clip, "q", VideoOptions(start=100.0))


def _whole_features(model, processor, clip, opts):
    whole = build_inputs(processor, model.config, clip, "What moves?", opts)
    with torch.no_grad():
        return _vision_features(model, whole.inputs["pixel_values_videos"], whole.inputs["video_grid_thw"], None)[0]


def test_a_parallel_read_given_up_midway_is_redone_by_decord(clip, tiny, monkeypatch):
    """The parallel reader (in threads) lands some frames (here: wrong ones, zeros) and then gives up: everything made
    from them is dropped and decord's frames are streamed instead, so the features are the whole-video path's."""
    from prism_mm.pipelines import frames as reader

    model, processor = tiny
    opts = VideoOptions(fps=4.0, decode_workers=4, decode_processes=False)  # _decode_run is patched here
    expected = _whole_features(model, processor, clip, opts)

    def lands_zeros_then_fails(path, index, start_key, frames, shape, threads, emit):
        for f in frames[:4]:
            emit(f, np.zeros(shape, np.uint8))
        raise reader.FrameIndexError("gave up")

    monkeypatch.setattr(reader, "_decode_run", lands_zeros_then_fails)
    (got, _), _ = stream.stream_video(model, processor, clip, "What moves?", opts, batch_pairs=1)
    assert got.shape == expected.shape and rel_err(got, expected) < 1e-5


def test_a_read_given_up_midway_restarts_the_pipelined_prefill(clip, tiny, monkeypatch):
    """With the decoder pipelined (stream_prefill), a parallel read given up after landing wrong frames also drops
    the prefill made so far: a new ChunkedPrefill starts over on decord's frames, and the tokens are generate()'s."""
    from prism_mm.pipelines import frames as reader

    model, processor = tiny
    opts = VideoOptions(fps=4.0, decode_workers=4, decode_processes=False)  # _decode_run is patched here
    whole = build_inputs(processor, model.config, clip, "What moves?", opts)
    with torch.no_grad():
        expected = model.generate(**whole.inputs, max_new_tokens=4, do_sample=False)[:, whole.total_tokens:]

    def lands_zeros_then_fails(path, index, start_key, frames, shape, threads, emit):
        for f in frames[:4]:
            emit(f, np.zeros(shape, np.uint8))
        raise reader.FrameIndexError("gave up")

    made = []
    init = stream.ChunkedPrefill.__init__
    monkeypatch.setattr(stream.ChunkedPrefill, "__init__", lambda self, *a: made.append(1) or init(self, *a))
    monkeypatch.setattr(reader, "_decode_run", lands_zeros_then_fails)
    prefill, features, _ = stream.stream_prefill(model, processor, clip, "What moves?", opts,
                                                 ChunkConfig(decoder_tokens=16), batch_pairs=1)
    assert len(made) == 2
    while not prefill.done:
        prefill.step(*features)
    assert torch.equal(greedy_decode(model, prefill.state(), max_new_tokens=4, eos_token_id=-1), expected)


def test_an_error_in_the_tower_stops_the_decoders_and_keeps_stderr(clip, tiny, monkeypatch, capfd):
    """An exception in the calling thread while frames decode reaches the caller, the decoding thread has ended when
    it does, and file descriptor 2 is the process's own again (the native-log capture is undone)."""
    import os
    import threading

    model, processor = tiny

    def boom(*args, **kwargs):
        raise RuntimeError("tower failed")

    monkeypatch.setattr(stream, "_tower", boom)
    with pytest.raises(RuntimeError, match="tower failed"):
        stream.stream_video(model, processor, clip, "q", VideoOptions(fps=4.0, decode_workers=2))
    assert not [t for t in threading.enumerate() if t.name == "prism_mm-decode"]
    os.write(2, b"still here\n")
    assert "still here" in capfd.readouterr().err


def test_an_mpeg_ts_file_is_read_by_decord(tmp_path, tiny):
    """MPEG-TS seeks by dts (a pts seek lands past the key frame): the parallel reader refuses the container, and
    sample_frames and streaming read it with decord."""
    from prism_mm.pipelines import frames as reader
    from prism_mm.pipelines.video import sample_frames

    ts = str(make_h264_clip(tmp_path / "clip.ts", frames=96, fps=24, gop=12, width=112, height=84))
    with pytest.raises(reader.FrameIndexError, match="mpegts container"):
        reader.FrameIndex.of(ts)
    _, meta, _ = sample_frames(ts, VideoOptions(fps=4.0, decode_workers=4), "qwen2_5_vl")
    assert meta["video_backend"] == "decord"
    model, processor = tiny
    opts = VideoOptions(fps=4.0, decode_workers=4)
    (got, _), _ = stream.stream_video(model, processor, ts, "What moves?", opts)
    expected = _whole_features(model, processor, ts, opts)
    assert rel_err(got, expected) < 1e-5
