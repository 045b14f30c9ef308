"""Experiment (sixth session): is file decoding worth parallelising? It is the stage before the processor that
video_e2e does not time. A 720p H.264 clip is written (PyAV, libx264 ultrafast, key frame every 250 frames, a moving
square over a gradient with a sparse noise texture, ~35 Mbit/s). Then, at qwen-vl-utils' 2 fps sampling:
- one decord reader as qwen-vl-utils opens it (num_threads=0: ffmpeg's own threads);
- the same reader with one thread;
- the sorted indices split into W contiguous runs, each decoded by its own one-thread reader in a thread (decord
  calls release the GIL), checked equal to the single reader's frames.
Also timed: qwen-vl-utils' bicubic antialiased resize to 420x784, the per-frame size video_e2e uses, on the CPU and
(seventh session) with prism_mm's resize_frames on each --resize-device; and prism_mm's sample_frames whole (probe,
frame choice, decode, resize) per device. One JSON line per measurement; several --seconds make one clip each.

    python lab/decode_probe.py --seconds 60 300 --workers 1 2 4 8 --resize-device cpu cuda > decode.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import decord
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf


def write_clip(path: str, seconds: float, fps: int = 30, height: int = 720, width: int = 1280) -> int:
    """The clip of this probe's logs (x264 ultrafast, a key frame every 250 frames), written by reader_probe's writer
    (which encodes with all cores since the eighth session)."""
    from reader_probe import write_clip as write

    return write(path, seconds, "ultrafast", 250, fps, height, width)


def in_runs(path: str, indices: list[int], workers: int, threads: int = 1) -> np.ndarray:
    size = -(-len(indices) // workers)
    parts = [indices[i:i + size] for i in range(0, len(indices), size)]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        arrays = list(pool.map(lambda p: decord.VideoReader(path, num_threads=threads).get_batch(p).asnumpy(), parts))
    return np.concatenate(arrays)


def synced(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[60.0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--reader-threads", type=int, nargs="+", default=[1], help="ffmpeg threads per reader in the runs")
    ap.add_argument("--resize-device", nargs="+", default=[], help="devices for prism_mm's resize_frames")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    for seconds in args.seconds:
        one_clip(args, seconds)


def one_clip(args, seconds: float):
    emit = lambda **r: print(json.dumps({"cores": os.cpu_count(), "clip_s": seconds, **r}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        t0 = time.perf_counter()
        n = write_clip(path, seconds)
        emit(what="clip", frames=n, seconds=seconds, mbytes=os.path.getsize(path) / 2**20,
             write_s=time.perf_counter() - t0)
        indices = torch.linspace(0, n - 1, int(seconds * 2)).round().long().tolist()
        reference = decord.VideoReader(path).get_batch(indices).asnumpy()  # warms the file cache too
        for _ in range(args.repeats):
            for threads in (0, 1):
                t0 = time.perf_counter()
                decord.VideoReader(path, num_threads=threads).get_batch(indices).asnumpy()
                emit(what="one reader", num_threads=threads, frames=len(indices), s=time.perf_counter() - t0)
            for w in args.workers:
                for threads in args.reader_threads:
                    t0 = time.perf_counter()
                    got = in_runs(path, indices, w, threads)
                    emit(what="runs", workers=w, reader_threads=threads, frames=len(indices),
                         s=time.perf_counter() - t0, equal=bool(np.array_equal(got, reference)))
        video = torch.from_numpy(reference).permute(0, 3, 1, 2)
        t0 = time.perf_counter()
        cpu = tvf.resize(video, [420, 784], interpolation=InterpolationMode.BICUBIC, antialias=True)
        emit(what="resize to 420x784", frames=len(indices), s=time.perf_counter() - t0)
        from prism_mm.pipelines.video import VideoOptions, resize_frames, sample_frames

        for device in args.resize_device:
            resize_frames(video[:16], (420, 784), device)  # warm-up (kernels, pinned paths)
            for _ in range(args.repeats):
                synced(device)
                t0 = time.perf_counter()
                got = resize_frames(video, (420, 784), device)
                synced(device)
                emit(what="resize_frames to 420x784", device=device, frames=len(indices), s=time.perf_counter() - t0,
                     max_level_diff=int((got.int() - cpu.round().clamp(0, 255).int()).abs().max()))
        for device in args.resize_device:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                frames, _, _ = sample_frames(path, VideoOptions(), "qwen2_5_vl", None if device == "cpu" else device)
                emit(what="sample_frames", device=device, frames=frames.shape[0], size=list(frames.shape[-2:]),
                     s=time.perf_counter() - t0)


if __name__ == "__main__":
    main()
