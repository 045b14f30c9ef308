"""Streamed video prefill: the file's decoding overlapped with the processor and the vision tower.

    features, prepared = stream_video(model, processor, "clip.mp4", "What happens?", VideoOptions(), "cuda")
    state = chunked_prefill(model, prepared.inputs, ChunkConfig(decoder_tokens=...), features)

Without streaming, the decoder prefill waits for three stages in a row: decoding every sampled frame, the processor
over all of them, the vision tower over all of them. Decoding is CPU work (pipelines.frames' decoders, in threads)
and the other two are GPU work, so here they run at once:

1. The plan, before any frame is decoded: probe, qwen-vl-utils' frame choice and frame size (sample_frames' own), and
   the prompt: the processor run over stand-in frames of that size (zeros, on the device), so that input_ids, the
   grid and the timestamps are the processor's own for this video; its pixels are dropped.
2. The decoders fill one frame array in background threads and report each frame as it lands.
3. The calling thread takes the temporal patches (frame pairs) whose two frames have landed, up to `batch_pairs` at a
   time: resizes them on the device, runs the video processor and then the vision tower on them, and copies the
   features to their patches' rows. The tower's attention never crosses temporal patches and its positions depend on
   a patch's place inside its frame only, so a patch's features do not depend on which patches share its call:
   they are those of one whole-video call (tested against sample_frames + the processor + the tower).

4. With decoder chunks (stream_prefill), each chunk of the decoder prefill runs as soon as the features of the video
   tokens up to its end exist: the frames are read roughly in time order and the earliest ready pairs go to the
   tower first, so the decoder works on the video's beginning while its end still decodes.

With the decoder pipelined, the parallel reader's decoders run in processes (VideoOptions.decode_processes), so the
calling thread, which enqueues the tower's and the decoder's GPU work, does not wait on them for the GIL. Files the
parallel reader (pipelines.frames) cannot number as decord does are read by decord first, and then
streamed the same way (no overlap with decoding then).

    prefill, features, prepared = stream_prefill(model, processor, "clip.mp4", "What happens?", VideoOptions(),
                                                 ChunkConfig(decoder_tokens=16384), "cuda")
    while not prefill.done:
        prefill.step(*features)
    state = prefill.state()
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from .prefill import ChunkConfig, ChunkedPrefill, _vision_features
from .video import (
    PreparedVideo,
    VideoError,
    VideoOptions,
    _first_line,
    _native_reason,
    check_model_type,
    check_range,
    native_stderr_captured,
    pixels_device,
    plan_video,
    prepared_video,
    probe,
    processor_kwargs,
    prompt_inputs,
    read_sampled,
    resize_frames,
)

BATCH_PAIRS = 32  # temporal patches per vision-tower call while streaming (16, 32, 64, 128 measured: 32 or flat)


def stream_video(model, processor, video_path: str, question: str | None, opts: VideoOptions,
                 device: str | None = None, batch_pairs: int = BATCH_PAIRS,
                 stand_in: bool = False) -> tuple[tuple, PreparedVideo]:
    """The video's vision-tower features (features [video tokens, hidden], deepstack list or None), computed while
    the file decodes, and its PreparedVideo (the processor's prompt tensors without pixel values; `seconds`: the
    whole streamed stage, decoding and vision tower included).

    stand_in=True decodes nothing: black frames of the sampled count and size take the file's place, all landed at
    once, so the processor, the tower's calls and the prompt have this video's shapes (a warm-up that compiles and
    allocates what the real run will, without decoding the file twice)."""
    features, prepared, _ = _stream(model, processor, video_path, question, opts, device, batch_pairs, stand_in, None)
    return features, prepared


def stream_prefill(model, processor, video_path: str, question: str | None, opts: VideoOptions, chunks: ChunkConfig,
                   device: str | None = None, batch_pairs: int = BATCH_PAIRS,
                   stand_in: bool = False) -> tuple[ChunkedPrefill, tuple, PreparedVideo]:
    """stream_video with the decoder prefill pipelined behind it: each decoder chunk of `chunks.decoder_tokens` runs
    as soon as the features of the video tokens up to its end exist (the frames are decoded roughly in time order
    and the tower takes the earliest decoded pairs first), while later frames still decode. Returns the
    ChunkedPrefill with the chunks that were ready run (the caller runs the rest: `while not p.done:
    p.step(*features)`), the features, and the PreparedVideo, `seconds` ending when the last features landed."""
    features, prepared, prefill = _stream(model, processor, video_path, question, opts, device, batch_pairs, stand_in,
                                          chunks)
    return prefill, features, prepared


def _stream(model, processor, video_path, question, opts, device, batch_pairs, stand_in, chunks):
    if not isinstance(batch_pairs, int) or batch_pairs < 1:
        raise ValueError(f"batch_pairs must be an int >= 1, got {batch_pairs!r}")
    t0 = time.perf_counter()
    model_type = check_model_type(model.config)
    info = probe(video_path)
    check_range(info, opts)
    if info.backend != "decord":
        raise StreamingUnavailable("streaming needs decord (pip install decord) to number the frames; or run without "
                                   "streaming")
    indices, in_range, (height, width) = plan_video(video_path, opts, info, model_type)
    if len(indices) % 2:
        raise StreamingUnavailable(f"{len(indices)} frames sampled: streaming takes frame pairs; run without "
                                   "streaming")
    metadata = {"fps": info.fps, "frames_indices": indices, "total_num_frames": in_range}
    pixels_on = pixels_device(opts, device)  # where the frames are resized and processed (the CPU for lmms_eval)
    blank = torch.zeros((len(indices), 3, height, width), dtype=torch.uint8, device=pixels_on)
    inputs = prompt_inputs(processor, blank, metadata, video_path, question, pixels_on, opts, model_type)
    del blank
    inputs.pop("pixel_values_videos", None)
    grid = inputs["video_grid_thw"]
    pipelined = chunks is not None
    if stand_in:
        def read(written, out, before_decord):
            written(list(range(len(indices))))  # out is zeros
    else:
        def read(written, out, before_decord):
            read_sampled(video_path, indices, info, opts, written=written, out=out, before_decord=before_decord,
                         in_order=pipelined)
    prepared = prepared_video(inputs, model.config, info, len(indices), (width, height))
    make_prefill = None
    if pipelined:
        model_inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        make_prefill = lambda: ChunkedPrefill(model, model_inputs, chunks)  # noqa: E731 - after a RESET: a new one
    call = (processor_kwargs(processor, opts, model_type), opts.sampler == "lmms_eval")
    features, prefill = _streamed_features(model, processor, video_path, read, len(indices), info, (height, width),
                                           grid, pixels_on, batch_pairs, make_prefill, call)
    prepared.seconds = time.perf_counter() - t0
    return features, prepared, prefill


class StreamingUnavailable(VideoError):
    """This video cannot be streamed (no decord to number its frames, an odd frame count); raised before any work,
    so callers run it in a row instead (VideoQA and the lmms-eval model do)."""


class _Stopped(Exception):
    """Raised in a decoding thread once the calling thread has stopped waiting for frames."""


class _DecodeFailed(Exception):
    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


RESET = "reset"  # queued when the parallel reader gave up after some frames landed: decord reads them all again


def _streamed_features(model, processor, path, read, n_frames, info, size, grid, device, batch_pairs, make_prefill,
                       call=None):
    """(features, the ChunkedPrefill make_prefill() made or None) of the `n_frames` frames that
    read(written, out, before_decord) puts into `out`, with ffmpeg's and decord's native log lines captured in this
    thread (for the error message) and the decoding thread stopped and joined before this returns or raises."""
    failed = None
    with native_stderr_captured() as native:
        try:
            return _stream_loop(model, processor, path, read, n_frames, info, size, grid, device, batch_pairs,
                                make_prefill, call)
        except _DecodeFailed as e:
            failed = e.error
    if isinstance(failed, VideoError):
        raise failed
    raise VideoError(f"cannot decode frames of {path} ({_native_reason(native, _first_line(failed))}); re-encode it, "
                     "e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4")


def _stream_loop(model, processor, path, read, n_frames, info, size, grid, device, batch_pairs, make_prefill, call):
    pairs = n_frames // 2
    _, h, w = (int(x) for x in grid[0].tolist())
    landed: queue.Queue = queue.Queue()
    frames = np.zeros((n_frames, info.height, info.width, 3), dtype=np.uint8)  # fresh pages, as np.empty's
    failure: list[BaseException] = []
    stop = threading.Event()
    wrote = threading.Event()

    def written(slots):
        if stop.is_set():
            raise _Stopped
        wrote.set()
        landed.put(slots)

    def decode():
        try:
            def dropped():  # decord reads the whole set: what the parallel reader landed before giving up goes
                if wrote.is_set():
                    landed.put(RESET)

            read(written, frames, dropped)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            failure.append(e)
        finally:
            landed.put(None)

    thread = threading.Thread(target=decode, name="prism_mm-decode", daemon=True)
    thread.start()
    try:
        have = np.zeros(n_frames, dtype=bool)
        ready: list[int] = []  # pairs whose two frames have landed, not yet sent to the tower
        out = _FeatureRows(pairs)
        prefill = make_prefill() if make_prefill is not None else None
        finished = False
        while out.done < pairs:
            block = not ready and not finished  # wait for a frame only when there is nothing to send
            while True:
                try:
                    item = landed.get(block=block)
                except queue.Empty:
                    break
                block = False
                if item is None:  # the decoding thread has ended
                    finished = True
                    continue
                if item == RESET:  # everything made from the parallel reader's frames goes
                    have[:] = False
                    ready.clear()
                    out = _FeatureRows(pairs)
                    prefill = None  # its KV cache goes before the new one is made
                    prefill = make_prefill() if make_prefill is not None else None
                    continue
                for slot in item:
                    have[slot] = True
                    pair = slot // 2
                    if have[2 * pair] and have[2 * pair + 1] and pair not in out.sent:
                        out.sent.add(pair)
                        ready.append(pair)
            if failure:
                raise _DecodeFailed(failure[0])
            if not ready:
                if finished:
                    raise _DecodeFailed(VideoError(f"cannot decode frames of {path}: {pairs - out.done} frame pairs "
                                                   "never arrived"))
                continue
            ready.sort()  # the earliest pairs first: the decoder's next chunk waits on the video's beginning
            batch, ready = ready[:batch_pairs], ready[batch_pairs:]
            out.add(batch, _tower(model, processor, frames, batch, size, (h, w), device, call))
            # the chunks whose features are in, while pairs are still to come (after the last, the caller runs the rest)
            while (prefill is not None and out.done < pairs and not prefill.done
                   and prefill.needs() <= out.rows_ready()):
                prefill.step(out.feats, out.deep)
        thread.join()
        if failure:
            raise _DecodeFailed(failure[0])
        return out.result(), prefill
    finally:
        stop.set()
        thread.join()


def _tower(model, processor, frames: np.ndarray, batch: list[int], size, hw, device, call=None):
    """The vision tower's (features, deepstack) of frame pairs `batch`, in that order. call: (the video processor's
    keyword arguments, whether it takes float frames), as for the whole video's prompt (video.processor_kwargs)."""
    slots = [f for pair in batch for f in (2 * pair, 2 * pair + 1)]
    chunk = torch.from_numpy(frames[slots]).permute(0, 3, 1, 2)
    chunk = resize_frames(chunk, size, device)
    kwargs, floats = call or ({"do_resize": False, "do_sample_frames": False}, False)
    pixels = processor.video_processor(videos=[chunk.float() if floats else chunk], return_tensors="pt", **kwargs,
                                       **({"device": str(device)} if device is not None else {}))
    grid = torch.tensor([[len(batch), *hw]], device=pixels["video_grid_thw"].device)
    if not torch.equal(pixels["video_grid_thw"].cpu(), grid.cpu()):
        raise RuntimeError(f"the processor made grid {pixels['video_grid_thw'].tolist()} for {len(batch)} pairs "
                           f"of {hw}")
    with torch.no_grad():
        return _vision_features(model, pixels["pixel_values_videos"].to(model.device), grid.to(model.device), None)


class _FeatureRows:
    """The tower's outputs written into the video's patch order as each batch of pairs comes (pair p: rows
    [p * per_pair, (p + 1) * per_pair)), and how many leading rows are final."""

    def __init__(self, pairs: int):
        self.pairs, self.done, self.sent = pairs, 0, set()
        self.feats, self.deep = None, None
        self.landed = np.zeros(pairs + 1, dtype=bool)  # a sentinel False past the end
        self.prefix = 0  # pairs [0, prefix) have their rows

    def add(self, batch: list[int], output) -> None:
        feats, deepstack = output
        per_pair = feats.shape[0] // len(batch)
        if self.feats is None:
            self.per_pair = per_pair
            self.feats = feats.new_empty((self.pairs * per_pair, *feats.shape[1:]))
            self.deep = None if deepstack is None else [d.new_empty((self.pairs * per_pair, *d.shape[1:]))
                                                        for d in deepstack]
        rows = (torch.tensor(batch)[:, None] * per_pair + torch.arange(per_pair)).reshape(-1).to(feats.device)
        self.feats.index_copy_(0, rows, feats)
        for into, part in zip(self.deep or [], deepstack or []):
            into.index_copy_(0, rows, part)
        self.landed[batch] = True
        while self.landed[self.prefix]:
            self.prefix += 1
        self.done += len(batch)

    def rows_ready(self) -> int:
        return self.prefix * self.per_pair if self.feats is not None else 0

    def result(self) -> tuple:
        return self.feats, self.deep
