"""The parallel frame reader (pipelines.frames) against decord, which numbers the frames qwen-vl-utils samples."""
import numpy as np
import pytest
import torch

decord = pytest.importorskip("decord")
pytest.importorskip("av")
pytest.importorskip("qwen_vl_utils")

from prism_mm.pipelines import frames as reader  # noqa: E402
from prism_mm.pipelines.video import VideoError, VideoOptions, sample_frames  # noqa: E402
from prism_mm.testing.clips import make_demo_video, make_h264_clip  # noqa: E402

CLIPS = {
    "mpeg4": dict(),
    "h264 B-frames": dict(frames=150, gop=24, bframes=3),
    "h264 open GOP": dict(frames=150, gop=30, bframes=3, open_gop=True),
    "h264 variable rate": dict(frames=120, gop=20, bframes=2, variable_rate=True),
    "h264 odd size": dict(frames=77, gop=10, bframes=0, width=170, height=98),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    out = {"mpeg4": str(make_demo_video(root / "mpeg4.mp4", seconds=5, fps=8, height=112, width=168))}
    for i, (name, kw) in enumerate(CLIPS.items()):
        if kw:
            out[name] = str(make_h264_clip(root / f"clip{i}.mp4", **kw))
    return out


def _decord(path, indices):
    return decord.VideoReader(path, num_threads=1).get_batch(indices).asnumpy()


@pytest.mark.parametrize("name", list(CLIPS))
def test_frames_equal_decords_byte_for_byte(clips, name):
    """Random frame sets (sorted; shuffled with repeats; every third frame) read by 1, 3 and 8 decoders (in threads,
    and 3 in processes), in balanced runs or in time order (4 runs a decoder), are decord's frames exactly, and every
    output frame is written (the output starts as uninitialised memory: checked against decord's frames, which
    differ from frame to frame)."""
    path = clips[name]
    index = reader.FrameIndex.of(path)
    n = len(decord.VideoReader(path, num_threads=1))
    assert len(index.pts) == n and index.keys[0] == 0
    rng = np.random.default_rng(len(name))
    picks = [sorted(rng.choice(n, size=min(n, 23), replace=False).tolist()),
             rng.choice(n, size=19, replace=True).tolist(), list(range(1, n, 3))]
    for wanted in picks:
        expected = _decord(path, wanted)
        for workers, in_order, processes in ((1, False, False), (3, False, False), (8, False, False), (1, True, False),
                                             (3, True, False), (3, False, True), (3, True, True)):
            got = reader.read_frames(path, wanted, index, workers=workers, in_order=in_order, processes=processes)
            assert got.shape == expected.shape and got.dtype == np.uint8
            assert np.array_equal(got, expected), (name, workers, in_order, processes)


def test_runs_cover_the_frames_from_their_key_frames(clips):
    """plan_runs: at most `workers` runs, in order, each starting at the last key frame at or before its first
    frame, together exactly the wanted frames; on a regular GOP their decoding spans are within 2x of each other."""
    index = reader.FrameIndex.of(clips["h264 B-frames"])
    wanted = list(range(0, len(index.pts), 5))
    for workers in (1, 2, 4, 16):
        runs = reader.plan_runs(index, wanted, workers)
        assert 1 <= len(runs) <= workers
        assert [f for _, frames in runs for f in frames] == wanted
        for key, frames in runs:
            assert key in index.keys and key <= frames[0]
            assert not [k for k in index.keys if key < k <= frames[0]]
        spans = [frames[-1] - key + 1 for key, frames in runs]
        assert max(spans) <= 2 * min(spans) + 24, spans  # one GOP of slack at the ends


def test_in_order_reading_lands_the_beginning_first(clips, monkeypatch):
    """in_order=True: 4 runs per decoder, submitted earliest first to a pool of `workers` threads; with one decoder
    thread (threads=1) the frames land exactly in time order, and each `written` call names the slots just filled."""
    path = clips["h264 B-frames"]
    index = reader.FrameIndex.of(path)
    wanted = list(range(0, len(index.pts), 4))
    plans = []
    real = reader.plan_runs
    monkeypatch.setattr(reader, "plan_runs", lambda *a: plans.append(a[2]) or real(*a))
    landed = []
    got = reader.read_frames(path, wanted, index, workers=1, threads=1, written=landed.extend, in_order=True)
    assert plans == [reader.IN_ORDER_RUNS] and landed == list(range(len(wanted)))
    assert np.array_equal(got, _decord(path, wanted))
    reader.read_frames(path, wanted, index, workers=2, in_order=False)
    assert plans[-1] == 2


def test_a_failed_run_cancels_the_runs_not_started(clips, monkeypatch):
    """Decoders in threads, in_order with 2 of them (6 runs or more): when a later run fails while the first is still
    decoding, the runs not started yet are cancelled (at most the one the free decoder took meanwhile starts) and the
    error is raised."""
    import time

    path = clips["h264 B-frames"]
    index = reader.FrameIndex.of(path)
    wanted = list(range(0, len(index.pts), 2))
    started = []

    def run(path, index, start_key, frames, shape, threads, emit):
        started.append(start_key)
        if len(started) == 2:
            raise reader.FrameIndexError("this run fails")
        time.sleep(0.3)

    monkeypatch.setattr(reader, "_decode_run", run)
    with pytest.raises(reader.FrameIndexError, match="this run fails"):
        reader.read_frames(path, wanted, index, workers=2, in_order=True, processes=False)
    assert len(reader.plan_runs(index, wanted, 2 * reader.IN_ORDER_RUNS)) >= 6 and len(started) <= 3, started


def _decoders_left():
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name.startswith("prism_mm-decoder")]


def test_a_decoder_process_error_is_raised_and_stops_the_others(clips):
    """Decoders in processes: frame numbers whose pts the file does not have (an index of another file) make the
    decoder of the last run fail in its process; read_frames raises its FrameIndexError, and no decoder process is
    left once it has returned."""
    path = clips["h264 B-frames"]
    index = reader.FrameIndex.of(path)
    late = len(index.pts) * 3 // 4
    wrong = reader.FrameIndex(index.pts[:late] + tuple(p + 1 for p in index.pts[late:]), index.keys, index.width,
                              index.height)
    with pytest.raises(reader.FrameIndexError, match="is no packet's"):
        reader.read_frames(path, list(range(0, len(index.pts), 2)), wrong, workers=3, processes=True)
    assert _decoders_left() == []


def test_a_failing_written_stops_the_decoder_processes(clips):
    """Decoders in processes: an exception raised by `written` (a stream that stopped waiting) ends the read with that
    exception, the other two decoders landing at most the frame each had in flight, and no decoder process is
    left."""
    path = clips["h264 B-frames"]
    index = reader.FrameIndex.of(path)
    calls = []

    class Stop(Exception):
        pass

    def written(slots):
        calls.append(slots)
        if len(calls) == 3:
            raise Stop

    wanted = list(range(len(index.pts)))
    with pytest.raises(Stop):
        reader.read_frames(path, wanted, index, workers=3, written=written, processes=True)
    assert 3 <= len(calls) <= 3 + 2 and _decoders_left() == []  # at most one frame more from each other decoder


def test_processes_need_a_main_module_safe_to_import_again(tmp_path, monkeypatch):
    """Decoder processes import the main module again: a main script without `if __name__ == "__main__":` makes
    decoder_processes_available() False (read_frames then decodes in threads); a guarded one, or none, keeps them."""
    import sys
    import types

    def main_script(text):
        script = tmp_path / f"s{len(list(tmp_path.iterdir()))}.py"
        script.write_text(text)
        module = types.ModuleType("__main__")
        module.__file__ = str(script)
        monkeypatch.setitem(sys.modules, "__main__", module)

    main_script("from prism_mm.pipelines.qa import VideoQA\nprint(VideoQA()('a.mp4', 'q'))\n")
    assert not reader.decoder_processes_available()
    main_script("import sys\n\ndef main():\n    pass\n\nif __name__ == '__main__':\n    sys.exit(main())\n")
    assert reader.decoder_processes_available()
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # a notebook: no file
    assert reader.decoder_processes_available()


def test_a_decoder_process_that_dies_hands_the_read_to_threads(clips, monkeypatch):
    """A decoder process killed mid-read (here: its target exits at once, without a word) makes read_frames decode in
    threads instead: the frames are still decord's."""
    path = clips["h264 B-frames"]
    index = reader.FrameIndex.of(path)
    wanted = list(range(0, len(index.pts), 3))
    monkeypatch.setattr(reader, "_decoder_main", _exit_at_once)
    raised = []
    real = reader._read_in_processes

    def spied(*args):
        try:
            real(*args)
        except Exception as e:
            raised.append(e)
            raise

    monkeypatch.setattr(reader, "_read_in_processes", spied)
    got = reader.read_frames(path, wanted, index, workers=3, processes=True)
    assert [type(e).__name__ for e in raised] == ["_DecodersDied"] and "exit code 3" in str(raised[0])
    assert np.array_equal(got, _decord(path, wanted)) and _decoders_left() == []


def _exit_at_once(*args):
    import os

    os._exit(3)


def test_sample_frames_takes_the_parallel_reader_and_falls_back_to_decord(clips, monkeypatch):
    """sample_frames reads with the parallel reader by default; where the file cannot be indexed as decord numbers it,
    and with reader="decord", decord reads: the frames are the same in all three cases."""
    path = clips["h264 B-frames"]
    frames, meta, _ = sample_frames(path, VideoOptions(fps=6.0), "qwen2_5_vl")
    assert meta["video_backend"] == "decord frame choice, parallel PyAV reader"
    decoded, dmeta, _ = sample_frames(path, VideoOptions(fps=6.0, reader="decord"), "qwen2_5_vl")
    assert dmeta["video_backend"] == "decord" and torch.equal(frames, decoded)

    def unindexable(path):
        raise reader.FrameIndexError("no pts")

    monkeypatch.setattr(reader.FrameIndex, "of", staticmethod(unindexable))
    fallback, fmeta, _ = sample_frames(path, VideoOptions(fps=6.0), "qwen2_5_vl")
    assert fmeta["video_backend"] == "decord" and torch.equal(frames, fallback)


def test_reader_options_are_checked():
    with pytest.raises(VideoError, match="reader must be one of parallel, decord"):
        VideoOptions(reader="ffmpeg")
    with pytest.raises(VideoError, match="decode_workers must be >= 1"):
        VideoOptions(decode_workers=0)
    with pytest.raises(VideoError, match="decode_processes must be None, True or False, got 'yes'"):
        VideoOptions(decode_processes="yes")


def test_out_of_range_frames_are_refused(clips):
    index = reader.FrameIndex.of(clips["mpeg4"])
    with pytest.raises(IndexError, match=r"frame indices must be in \[0, 40\)"):
        reader.read_frames(clips["mpeg4"], [0, 40], index)


def test_probe_is_not_repeated_for_an_unchanged_file(clips, tmp_path):
    """probe() decodes the last frame to catch truncated files; a second probe of the same unchanged file returns
    the first one's result without opening it, and a rewritten file is probed again."""
    import shutil

    from prism_mm.pipelines import video

    path = tmp_path / "copy.mp4"
    shutil.copy(clips["h264 odd size"], path)
    first = video.probe(str(path))
    calls = video._probe.cache_info().misses
    assert video.probe(str(path)) is first and video._probe.cache_info().misses == calls
    shutil.copy(clips["h264 B-frames"], path)
    second = video.probe(str(path))
    assert video._probe.cache_info().misses == calls + 1 and (second.frames, second.width) == (150, 320)


def test_no_frames_asked_gives_an_empty_array(clips):
    got = reader.read_frames(clips["mpeg4"], [])
    assert got.shape == (0, 112, 168, 3) and got.dtype == np.uint8
