"""Experiment (eighth session): the parallel frame reader (prism_mm.pipelines.frames) against decord as
qwen-vl-utils opens it, on generated 720p H.264 clips at qwen-vl-utils' 2 fps sampling.

Per clip: the index pass (FrameIndex.of), decord (num_threads=0: ffmpeg's threads), read_frames for several
(workers, threads per decoder), each checked byte-equal to decord's frames; then sample_frames whole (probe, frame
choice, read, resize on --resize-device) with reader="parallel" and reader="decord". One JSON line per measurement.

    python lab/reader_probe.py --clip 60:ultrafast:250 --clip 60:veryfast:60 --clip 300:ultrafast:250 > reader.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import decord
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from prism_mm.pipelines import frames as reader  # noqa: E402
from prism_mm.testing.clips import make_long_clip  # noqa: E402
from prism_mm.pipelines.video import VideoOptions, _frame_choice, fetch_video_request, probe, sample_frames  # noqa: E402


def write_clip(path: str, seconds: float, preset: str, gop: int, fps: int = 30, height: int = 720, width: int = 1280):
    make_long_clip(path, seconds, fps, height, width, preset=preset, gop=gop)
    return int(seconds * fps)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", action="append", required=True, help="seconds:x264 preset:gop")
    ap.add_argument("--combos", default="1x16,2x8,4x4,8x2,16x1,8x4,16x2", help="workers x threads per decoder")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--resize-device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    combos = [tuple(int(x) for x in c.split("x")) for c in args.combos.split(",")]
    for spec in args.clip:
        seconds, preset, gop = spec.split(":")
        one_clip(float(seconds), preset, int(gop), combos, args)


def one_clip(seconds, preset, gop, combos, args):
    base = {"cores": os.cpu_count(), "clip_s": seconds, "preset": preset, "gop": gop}
    emit = lambda **r: print(json.dumps({**base, **r}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        n, s = timed(lambda: write_clip(path, seconds, preset, gop))
        emit(what="clip", frames=n, mbytes=os.path.getsize(path) / 2**20, write_s=s)
        info = probe(path)
        opts = VideoOptions(fps=2.0)
        indices, _ = _frame_choice(fetch_video_request(path, opts), info.frames, info.fps)
        index, s = timed(lambda: reader.FrameIndex.of(path))
        emit(what="index pass", frames=len(index.pts), keys=len(index.keys), s=s)
        from prism_mm.pipelines import video

        video._probe.cache_clear()  # the run of 2026-12-03 08:00 timed the cached probe (the frame choice had made it)
        _, s = timed(lambda: probe(path))
        emit(what="probe (decord open + last frame)", s=s)
        reference = None
        for r in range(args.repeats):
            reference, s = timed(lambda: decord.VideoReader(path).get_batch(indices).asnumpy())
            emit(what="decord", num_threads=0, frames=len(indices), repeat=r, s=s)
        for workers, threads in combos:
            for r in range(args.repeats):
                got, s = timed(lambda: reader.read_frames(path, indices, index, workers, threads))
                runs = len(reader.plan_runs(index, sorted(set(indices)), workers))
                emit(what="read_frames", workers=workers, threads=threads, runs=runs, frames=len(indices), repeat=r,
                     s=s, equal=bool(np.array_equal(got, reference)))
        for r in range(args.repeats):
            for name in ("parallel", "decord"):
                (frames, meta, _), s = timed(lambda: sample_frames(path, VideoOptions(fps=2.0, reader=name),
                                                                   "qwen2_5_vl", args.resize_device))
                emit(what="sample_frames", reader=name, backend=meta["video_backend"], device=args.resize_device,
                     frames=frames.shape[0], size=list(frames.shape[-2:]), repeat=r, s=s)


if __name__ == "__main__":
    main()
