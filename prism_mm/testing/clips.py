"""Synthetic clips for tests and benchmarks: H.264 clips with chosen GOP structures, long 720p footage; the demo
clip (prism_mm.demo_clips) re-exported for the tests that use it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._optional import require
from ..demo_clips import make_demo_video  # noqa: F401 - the tests' and benchmarks' import path


def make_h264_clip(path: str | Path, frames: int, fps: int = 30, width: int = 320, height: int = 176, gop: int = 24,
                   bframes: int = 3, open_gop: bool = False, variable_rate: bool = False, seed: int = 0) -> Path:
    """Write an H.264 clip of noisy frames with a key frame every `gop` frames and up to `bframes` B-frames in a row
    (open GOPs on request); variable_rate spaces the frames 20-59 ms apart on a 1/1000 s time base."""
    import fractions

    av = require("av", "video", "writing demo clips")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "bf": str(bframes), **({"x264-params": "open-gop=1"} if open_gop else {})}
        if variable_rate:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        t = 0
        for i in range(frames):
            image = (rng.integers(0, 64, (height, width, 3)) + i * 3 % 192).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if variable_rate:
                frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
                t += int(rng.integers(20, 60))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_long_clip(path: str | Path, seconds: float, fps: int = 30, height: int = 720, width: int = 1280,
                   seed: int = 0, preset: str = "ultrafast", gop: int = 250) -> Path:
    """Write a long H.264 clip (a red square crossing a gradient, sparse noise; libx264 on every core): the footage
    of the GPU benchmarks (300 s at 720p: ~109K visual tokens for Qwen2.5-VL at 2 fps). `seed` varies the noise."""
    import os

    av = require("av", "video", "writing demo clips")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 96)], -1).astype(np.uint8)
    n = int(seconds * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset, "g": str(gop)}
        stream.codec_context.thread_count = os.cpu_count()
        for i in range(n):
            frame = background.copy()
            x0 = int((width - 120) * i / n)
            frame[200:320, x0:x0 + 120] = (220, 30, 30)
            frame[::7, ::5] = rng.integers(0, 255, frame[::7, ::5].shape, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
