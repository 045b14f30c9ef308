"""Synthetic demo clips (moving coloured shapes), so the demo CLI, the notebooks, the smoke task and the tests need no
footage."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._optional import require


def make_demo_video(path: str | Path, seconds: float = 6.0, fps: int = 8, height: int = 224, width: int = 320,
                    seed: int = 0) -> Path:
    """Write an MPEG-4 clip of a red square moving right and a blue disc moving down over a gradient."""
    av = require("av", "video", "writing demo clips")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = max(2, int(round(seconds * fps)))
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                           np.full_like(xx, 96)], -1).astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000
        for i in range(n):
            frame = background.copy()
            s = max(8, height // 6)
            x0 = int((width - s) * i / max(n - 1, 1))
            frame[height // 4:height // 4 + s, x0:x0 + s] = (220, 30, 30)
            cy, cx, r = int((height - s) * i / max(n - 1, 1)) + s // 2, width // 2, s // 2
            frame[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (30, 60, 220)
            frame = np.clip(frame.astype(np.int16) + rng.integers(-6, 7, frame.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
