"""Reading sampled frames fast: decoded in parallel, one PyAV decoder per run of key-frame segments.

A 2 fps sample of a 30 fps video still decodes every frame (each depends on the ones before it, back to a key
frame), and one decoder does that at ~1,100 frames/s for 720p H.264: ~8 s for a 5-minute clip, longer than the
vision tower and the Prism prefill of its 128K visual tokens together (benchmarks/NOTES.md). The decoding is cut
at key frames instead:

1. An index pass demuxes the packets (no decoding) and numbers the frames in presentation order, as decord does
   (its frame i is the i-th smallest packet pts), and notes the key frames.
2. The wanted frames are grouped by the key frame each needs to start from, and the groups are joined into at most
   `workers` contiguous runs of about equal decoding work.
3. Each run gets its own container and decoder in a thread (PyAV releases the GIL while it demuxes, decodes and
   converts): it seeks to its first key frame, decodes forward, converts the frames it wants to RGB (rgb24, as
   decord converts them) straight into the output array, and stops after its last.

Files this cannot number as decord does (a packet without pts, a decoded frame whose pts no packet had, a stream
without key frames, or no PyAV) and containers whose seek is not by pts (anything but MP4 / MOV and Matroska / WebM;
MPEG-TS seeks by dts) raise FrameIndexError; callers read those with decord.

    index = FrameIndex.of(path)
    frames = read_frames(path, [0, 15, 30], index, workers=8)   # uint8 [3, H, W, 3]
"""
from __future__ import annotations

import bisect
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

MAX_WORKERS = 16
IN_ORDER_RUNS = 4  # runs per decoder when read in time order
# Containers whose seek lands on the key frame of a pts (tested): others (MPEG-TS seeks by dts, and lands past it)
# are read by decord.
SEEKABLE_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")


class FrameIndexError(RuntimeError):
    """The file's frames cannot be numbered from its packets as decord numbers them (read it with decord)."""


@dataclass(frozen=True)
class FrameIndex:
    """A video stream's frames in presentation order: pts[i] is frame i's, keys the frame numbers of key frames."""

    pts: tuple[int, ...]
    keys: tuple[int, ...]
    width: int
    height: int

    @classmethod
    def of(cls, path: str) -> FrameIndex:
        import av

        pts, key_pts = [], []
        with av.open(path) as container:
            if container.format.name not in SEEKABLE_FORMATS:
                raise FrameIndexError(f"{path}: a {container.format.name} container (seeks by pts only in "
                                      f"{' / '.join(SEEKABLE_FORMATS)})")
            stream = container.streams.best("video")  # the stream decord reads (av_find_best_stream)
            if stream is None:
                raise FrameIndexError(f"{path}: no video stream")
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                if packet.pts is None:
                    raise FrameIndexError(f"{path}: a packet without pts")
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
            width, height = stream.codec_context.width, stream.codec_context.height
        pts.sort()
        if not key_pts or len(set(pts)) != len(pts):
            raise FrameIndexError(f"{path}: no key frame or repeated pts")
        position = {p: i for i, p in enumerate(pts)}
        return cls(tuple(pts), tuple(sorted(position[p] for p in key_pts)), width, height)


def plan_runs(index: FrameIndex, wanted: list[int], workers: int) -> list[tuple[int, list[int]]]:
    """The sorted distinct `wanted` frames as at most `workers` runs [(start key frame, frames)], contiguous, in
    order, of about equal decoding work (frames from the run's key frame to its last frame)."""
    segments: list[tuple[int, list[int]]] = []  # (key frame, the wanted frames that start decoding there)
    for f in wanted:
        key = index.keys[max(bisect.bisect_right(index.keys, f) - 1, 0)]
        if segments and segments[-1][0] == key:
            segments[-1][1].append(f)
        else:
            segments.append((key, [f]))
    if not segments:
        return []
    end = segments[-1][1][-1]
    runs: list[tuple[int, list[int]]] = []
    budget = 0.0
    for key, frames in segments:
        if runs:
            span, joined = runs[-1][1][-1] - runs[-1][0] + 1, frames[-1] - runs[-1][0] + 1
            if len(runs) >= workers or joined - budget <= budget - span:  # joining leaves it nearer its share
                runs[-1][1].extend(frames)
                continue
        runs.append((key, list(frames)))  # a new run: its share is the work left, from its key frame to the end
        budget = (end - key + 1) / (workers - len(runs) + 1)
    return runs


def _decode_run(path: str, index: FrameIndex, start_key: int, frames: list[int], slots: dict[int, list[int]],
                out: np.ndarray, threads: int, written) -> None:
    import av

    position = {p: i for i, p in enumerate(index.pts)}
    last, todo = frames[-1], set(frames)
    with av.open(path) as container:
        stream = container.streams.best("video")
        stream.codec_context.thread_type = "AUTO" if threads > 1 else "SLICE"
        stream.codec_context.thread_count = threads
        if start_key > 0:
            container.seek(index.pts[start_key], stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            i = position.get(frame.pts)
            if i is None:
                raise FrameIndexError(f"{path}: a decoded frame's pts ({frame.pts}) is no packet's")
            if i in todo:
                rgb = frame.to_ndarray(format="rgb24")
                if rgb.shape != out.shape[1:]:
                    raise FrameIndexError(f"{path}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, the stream "
                                          f"{out.shape[2]}x{out.shape[1]}")
                for slot in slots[i]:
                    out[slot] = rgb
                if written is not None:
                    written(slots[i])
                todo.discard(i)
            if i >= last and not todo:
                return
    if todo:
        raise FrameIndexError(f"{path}: frames {sorted(todo)[:4]} were not decoded")


def read_frames(path: str, indices: list[int], index: FrameIndex | None = None, workers: int | None = None,
                threads: int | None = None, written=None, out: np.ndarray | None = None,
                in_order: bool = False) -> np.ndarray:
    """Frames `indices` (decord's numbering; any order, repeats allowed) as uint8 [len(indices), H, W, 3] RGB, read by
    up to `workers` decoders in parallel (None: half the machine's cores, at most MAX_WORKERS), each with `threads`
    ffmpeg threads (None: twice the cores shared out among the runs, at most 16; on the H200 host's 16 cores 8
    decoders x 4 threads were the fastest of 7 splits, lab/logs/reader_probe-h200-16cores.jsonl). `written(slots)`,
    when given, is called from the decoding threads with the output rows each frame has just filled (so a caller can
    use frames while others decode); `out`, when given, is the array filled (of the shape and dtype returned).
    in_order=True cuts IN_ORDER_RUNS runs per decoder, taken earliest first, so that the frames land roughly in
    time order (a consumer of `written` that needs the video's beginning first: the pipelined prefill)."""
    index = index or FrameIndex.of(path)
    if any(not 0 <= i < len(index.pts) for i in indices):
        raise IndexError(f"frame indices must be in [0, {len(index.pts)}), got {min(indices)}..{max(indices)}")
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or max(cores // 2, 1), MAX_WORKERS))
    slots: dict[int, list[int]] = {}
    for slot, i in enumerate(indices):
        slots.setdefault(i, []).append(slot)
    shape = (len(indices), index.height, index.width, 3)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
    runs = plan_runs(index, sorted(slots), workers * (IN_ORDER_RUNS if in_order else 1))
    if not runs:  # no frames asked for
        return out
    decoders = min(workers, len(runs))
    threads = threads or max(1, min(2 * cores // decoders, 16))
    if len(runs) == 1:
        _decode_run(path, index, *runs[0], slots, out, threads, written)
        return out
    with ThreadPoolExecutor(max_workers=decoders) as pool:  # runs are taken in submission (time) order
        futures = [pool.submit(_decode_run, path, index, key, frames, slots, out, threads, written)
                   for key, frames in runs]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in finished and f.exception() is not None]
        if failed:
            for waiting in futures:  # runs not started yet are not decoded for nothing
                waiting.cancel()
            raise failed[0].exception()
    return out
