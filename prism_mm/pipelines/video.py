"""Video decoding and sampling -> model inputs for a Qwen-VL chat prompt.

Decoding: decord numbers the frames (PyAV via torchvision only if decord is missing); the sampled frames are read
by pipelines.frames (PyAV decoders in parallel over key-frame segments, the same frames as decord's, byte for byte)
or, where that cannot number them as decord does, by decord itself; frame sampling by fps and/or a
frame cap within an optional [start, end] time range, and resizing under min/max/total pixel
budgets, both by qwen-vl-utils' rules (the reference Qwen-VL preprocessing: with decord computed
here with its helpers, so the resize can run on the session's GPU; else its fetch_video). Every
bad input raises a VideoError whose message names the fix.

VideoOptions.sampler="lmms_eval" instead reproduces what lmms-eval's own `qwen2_vl`, `qwen2_5_vl` and `qwen3_vl`
classes (lmms-eval 0.7.3, simple models; prism_mm.eval.model.PARITY_VERSIONS) feed the model for the loaded model's
family: their frame choice and sizing, how they call the processor (with or without the frames' fps, resizing again
or not), float frames, resized and processed on the CPU (see docs/evaluation.md, "lmms-eval parity")."""
from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import tempfile
from dataclasses import dataclass

import torch

from .._optional import require
from ..models import VL_PATCH_SIZES

READERS = ("parallel", "decord")
# "qwen": qwen-vl-utils' fps / max_frames sampling, the processor called as qwen-vl-utils' README does;
# "lmms_eval": what lmms-eval's class for the model's family feeds it (lmms_eval_plan, prompt_inputs)
SAMPLERS = ("qwen", "lmms_eval")


class VideoError(ValueError):
    """A video that cannot be used, with a message that says what to do."""


@dataclass(frozen=True)
class VideoOptions:
    """How to sample and size a video (qwen-vl-utils semantics), and what comes before it in the prompt.

    sampler="lmms_eval": as lmms-eval's class for the model's family (lmms_eval_plan): max_frames is its
    max_num_frames; fps=None is its default (no fps model_arg: Qwen2-VL / Qwen2.5-VL sample at qwen-vl-utils' 2 fps
    and keep max_frames of those, evenly spaced; Qwen3-VL takes max_frames frames, evenly spaced); min_pixels /
    max_pixels / total_pixels are passed as its model_args are (None: not passed). system_prompt: a system message
    before the video (None: none; the chat template may add its own)."""

    fps: float | None = 2.0  # None: only with sampler="lmms_eval"
    max_frames: int | None = None
    min_pixels: int | None = None  # per frame
    max_pixels: int | None = None  # per frame
    total_pixels: int | None = None  # budget over all frames (bounds the visual token count)
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    reader: str = "parallel"  # "parallel": pipelines.frames' decoders over key-frame segments; "decord": one decord reader
    decode_workers: int | None = None  # decoders of the parallel reader (None: half the cores, at most 16)
    # the parallel reader's decoders in processes (True) or threads (False); None: processes while the decoder prefill
    # runs behind the decoding (a pipelined stream: the GIL the decoder threads share starves its launches), else
    # threads (no process start-up; as fast when the calling thread waits or only streams the tower)
    decode_processes: bool | None = None
    sampler: str = "qwen"
    system_prompt: str | None = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise VideoError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "lmms_eval":
            if self.max_frames is None:
                raise VideoError("sampler='lmms_eval' needs max_frames (lmms-eval's max_num_frames, 32 by default)")
            if self.start is not None or self.end is not None:
                raise VideoError("sampler='lmms_eval' reads the whole video, as lmms-eval does: drop start / end, or "
                                 "use sampler='qwen'")
        elif self.fps is None:
            raise VideoError("fps=None (no fps, as lmms-eval's default) needs sampler='lmms_eval'; pass an fps")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise VideoError(f"system_prompt must be a string or None, got {self.system_prompt!r}")
        if self.reader not in READERS:
            raise VideoError(f"reader must be one of {', '.join(READERS)}, got {self.reader!r}")
        if self.decode_workers is not None and self.decode_workers < 1:
            raise VideoError(f"decode_workers must be >= 1, got {self.decode_workers}")
        if self.decode_processes not in (None, True, False):
            raise VideoError(f"decode_processes must be None, True or False, got {self.decode_processes!r}")
        if self.fps is not None and self.fps <= 0:
            raise VideoError(f"fps must be > 0, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 2:
            raise VideoError(f"max_frames must be >= 2 (frames go in pairs), got {self.max_frames}")
        for name in ("min_pixels", "max_pixels", "total_pixels"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise VideoError(f"{name} must be > 0, got {v}")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise VideoError(f"start ({self.start}s) must be before end ({self.end}s)")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    frames: int
    duration: float
    width: int
    height: int
    backend: str


@dataclass
class PreparedVideo:
    inputs: dict  # processor output: tensors for model.generate / model(...)
    info: VideoInfo
    frames_used: int
    frame_size: tuple[int, int]  # (width, height) after resizing
    visual_tokens: int
    total_tokens: int
    seconds: float = 0.0  # decoding, sampling and the processor (set by VideoSession.prepare)


@contextlib.contextmanager
def native_stderr_captured():
    """Capture what native code (ffmpeg's av_log, decord's logger) writes to file descriptor 2, so that it does
    not precede our one-line error. Yields a list that receives the captured lines on exit."""
    lines: list[str] = []
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (some notebook front ends): nothing to capture
        fd = 2
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(sink.fileno(), fd)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _first_line(error: Exception) -> str:
    """An exception's first message line (120 characters at most), or its type's name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else type(error).__name__


def _native_reason(lines: list[str], fallback: str) -> str:
    """The most telling native log line ("moov atom not found"), without its "[decoder @ 0x...]" prefix."""
    for line in lines:
        if line.startswith("[") and "@" in line.split("]", 1)[0]:
            return line.split("]", 1)[1].strip()[:120]
    return fallback


def probe(path: str) -> VideoInfo:
    """Open the video and read its metadata; VideoError for missing, unreadable or empty files. The check decodes the
    last frame (back from its key frame): a file probed before and unchanged since (the same path, device, inode,
    size, mtime and ctime) is not probed again (the CLI probes before loading the model, sample_frames after)."""
    if not os.path.exists(path):
        raise VideoError(f"video not found: {path} (check the path)")
    if os.path.isdir(path):
        raise VideoError(f"{path} is a directory; pass a video file")
    stat = os.stat(path)
    if stat.st_size == 0:
        raise VideoError(f"{path} is empty (0 bytes); pass a real video file")
    return _probe((os.path.abspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns),
                  path)


@functools.lru_cache(maxsize=64)
def _probe(key: tuple, path: str) -> VideoInfo:  # key: the file's identity (ctime: no copy tool can set it)
    try:
        import decord

        error = None
        with native_stderr_captured() as native:
            try:
                vr = decord.VideoReader(path, num_threads=0)  # ffmpeg's threads for the last frame's decoding
                frames, fps = len(vr), float(vr.get_avg_fps())
                h, w = vr[0].shape[:2] if frames else (0, 0)
                if frames > 1:
                    vr[frames - 1]  # a truncated file fails here rather than mid-sampling
            except Exception as e:  # noqa: BLE001 - decord raises its own error types
                error = _first_line(e)
        if error is not None:
            raise VideoError(f"cannot decode {path}: not a video or corrupt ({_native_reason(native, error)}); "
                             "re-encode it, e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4")
        backend = "decord"
    except ImportError:  # no decord: PyAV reads the file
        av = require("av", "video", "video input (decord is not installed either)")

        error = None
        with native_stderr_captured():
            try:
                with av.open(path) as container:
                    stream = container.streams.video[0]
                    fps = float(stream.average_rate or 0)
                    frames = sum(1 for _ in container.decode(video=0))
                    h, w = stream.codec_context.height, stream.codec_context.width
            except (av.FFmpegError, IndexError) as e:
                error = str(e)
        if error is not None:
            raise VideoError(f"cannot decode {path}: not a video or corrupt ({error}); re-encode it with ffmpeg")
        backend = "pyav"
    if frames == 0 or fps <= 0:
        raise VideoError(f"{path} has no decodable frames; re-encode it or pass another file")
    return VideoInfo(path, fps, frames, frames / fps, w, h, backend)


def check_range(info: VideoInfo, opts: VideoOptions) -> None:
    if opts.start is not None and opts.start >= info.duration:
        raise VideoError(f"start={opts.start}s is past the end of the video ({info.duration:.2f}s)")
    if opts.end is not None and opts.end <= (opts.start or 0.0):
        raise VideoError(f"end={opts.end}s must be after start={opts.start or 0.0}s")
    if opts.start is not None and opts.start < 0:
        raise VideoError(f"start must be >= 0, got {opts.start}")


def _quiet_backend_choice(fetch_video) -> None:
    """qwen-vl-utils prints "qwen-vl-utils using decord to read video." to stderr the first time it picks its
    reader (a cached function): make that first call here, with the line swallowed."""
    choose = getattr(sys.modules.get(fetch_video.__module__), "get_video_reader_backend", None)
    if choose is not None:
        with contextlib.redirect_stderr(io.StringIO()):
            choose()


def fetch_video_request(path: str, opts: VideoOptions) -> dict:
    """The request dict qwen-vl-utils' fetch_video takes for `opts` (what sample_frames samples by)."""
    ele = {"video": path, "fps": opts.fps}
    for key, value in (("max_frames", opts.max_frames), ("min_pixels", opts.min_pixels), ("max_pixels", opts.max_pixels),
                       ("total_pixels", opts.total_pixels), ("video_start", opts.start), ("video_end", opts.end)):
        if value is not None:
            ele[key] = value
    if opts.max_frames is not None:
        ele["min_frames"] = min(4, opts.max_frames)
    return ele


RESIZE_CHUNK = 16  # frames moved to the device and resized at a time (4K frames: ~1.6 GB of float copies there)


def sample_frames(path: str, opts: VideoOptions, model_type: str, device: str | None = None):
    """Sample, decode and resize as qwen-vl-utils' fetch_video does. Returns (frames uint8 [T,3,H,W], metadata,
    info). With decord, the frames are chosen here with qwen-vl-utils' frame choice and sizing (plan_video), read by
    opts.reader (the parallel reader where it numbers the frames as decord does, else decord; the same frames and
    metadata as fetch_video's but for metadata["video_backend"], tested) and resized on `device` (None: the CPU; the
    frames come back to the CPU either way); on a GPU its float rounding may move a value by one level against the
    CPU's, so sampler="lmms_eval" always resizes on the CPU, as lmms-eval does. Without decord, fetch_video reads and
    resizes on the CPU (sampler="lmms_eval" needs decord, as lmms-eval's classes do)."""
    fetch_video = require("qwen_vl_utils", "video", "sampling video frames").fetch_video

    _quiet_backend_choice(fetch_video)
    info = probe(path)
    check_range(info, opts)
    if info.backend == "decord" or opts.sampler == "lmms_eval":
        return _sample_decord(path, opts, info, model_type, device)
    try:
        (video, metadata), _ = fetch_video(fetch_video_request(path, opts), image_patch_size=VL_PATCH_SIZES[model_type],
                                           return_video_sample_fps=True, return_video_metadata=True)
    except (ValueError, RuntimeError) as e:
        raise VideoError(f"cannot sample frames from {path}: {e}") from None
    return video.round().clamp(0, 255).to(torch.uint8), metadata, info


def pixels_device(opts: VideoOptions, device: str | None) -> str | None:
    """Where sampled frames are resized and processed: `device`, but the CPU for sampler="lmms_eval" (lmms-eval's
    classes do both on the CPU; a GPU's float rounding may move a value by one level)."""
    return None if opts.sampler == "lmms_eval" else device


def plan_video(path: str, opts: VideoOptions, info: VideoInfo, model_type: str) -> tuple[list[int], int, tuple[int, int]]:
    """(the file's frame indices to read, the number of frames in the sampled time range, (height, width) they are
    resized to) for `opts`: qwen-vl-utils' fps / max_frames sampling (sampler="qwen") or lmms-eval's
    (lmms_eval_plan); VideoError for what their checks refuse."""
    if opts.sampler == "lmms_eval":
        if info.backend != "decord":
            raise VideoError("sampler='lmms_eval' reads frames with decord, as lmms-eval's Qwen-VL classes do: "
                             "pip install decord")
        return lmms_eval_plan(path, opts, info, model_type)
    return plan_sample(path, fetch_video_request(path, opts), info, VL_PATCH_SIZES[model_type])


def lmms_eval_request(path: str, opts: VideoOptions, model_type: str, total_frames: int) -> dict:
    """The video element lmms-eval's class for `model_type` gives qwen-vl-utils (fetch_video) for `opts`.

    qwen3_vl (Qwen3_VL._build_video_kwargs): min_pixels; fps and max_frames with an fps, else max_frames with a
    total_pixels, else nframes = min(max_num_frames, the file's frames); total_pixels if given, else max_pixels.
    qwen2_vl / qwen2_5_vl: max_pixels and min_pixels only (qwen-vl-utils then samples at 2 fps, at most 768 frames);
    an fps or total_pixels here (beyond lmms-eval: its classes take neither) go in as well."""
    ele: dict = {"video": path}
    if model_type == "qwen3_vl":
        if opts.min_pixels is not None:
            ele["min_pixels"] = opts.min_pixels
        if opts.fps is not None:
            ele["fps"], ele["max_frames"] = opts.fps, opts.max_frames
        elif opts.total_pixels is not None:
            ele["max_frames"] = opts.max_frames
        else:
            ele["nframes"] = min(opts.max_frames, total_frames)
        if opts.total_pixels is not None:
            ele["total_pixels"] = opts.total_pixels
        elif opts.max_pixels is not None:
            ele["max_pixels"] = opts.max_pixels
        return ele
    for key, value in (("max_pixels", opts.max_pixels), ("min_pixels", opts.min_pixels), ("fps", opts.fps),
                       ("total_pixels", opts.total_pixels)):
        if value is not None:
            ele[key] = value
    return ele


def lmms_eval_plan(path: str, opts: VideoOptions, info: VideoInfo, model_type: str):
    """plan_video for sampler="lmms_eval": qwen-vl-utils' frame choice and size for lmms_eval_request; then, for
    Qwen2-VL and Qwen2.5-VL, lmms-eval's thinning of those frames (already sized for their count): the ones at
    np.linspace(0, n - 1, max_num_frames, dtype=int), each once, and for Qwen2.5-VL the last one if it is missing."""
    indices, in_range, size = plan_sample(path, lmms_eval_request(path, opts, model_type, info.frames), info,
                                          VL_PATCH_SIZES[model_type])
    if model_type != "qwen3_vl":
        import numpy as np

        n = len(indices)
        keep = np.unique(np.linspace(0, n - 1, opts.max_frames, dtype=int))
        if model_type == "qwen2_5_vl" and n - 1 not in keep:
            keep = np.unique(np.append(keep, n - 1))
        indices = [indices[i] for i in keep.tolist()]
    return indices, in_range, size


def _read_parallel(path: str, indices: list[int], info: VideoInfo, opts: VideoOptions, written=None, out=None,
                   in_order: bool = False):
    """The frames by pipelines.frames (read_frames' `written` and `out`), or None where it cannot number them as
    decord does (decord then reads)."""
    try:
        import av

        from . import frames as reader
    except ImportError:
        return None
    try:
        index = reader.FrameIndex.of(path)
        if len(index.pts) != info.frames or (index.width, index.height) != (info.width, info.height):
            return None  # not decord's frame list: decord reads it
        processes = in_order if opts.decode_processes is None else opts.decode_processes
        return reader.read_frames(path, indices, index, opts.decode_workers, written=written, out=out,
                                  in_order=in_order, processes=processes)
    except (reader.FrameIndexError, av.FFmpegError, IndexError):
        return None


PARALLEL_BACKEND = "decord frame choice, parallel PyAV reader"


def plan_sample(path: str, ele: dict, info: VideoInfo, patch: int) -> tuple[list[int], int, tuple[int, int]]:
    """qwen-vl-utils' frame indices for `ele`, the number of frames in its time range, and the (height, width) the
    frames are resized to; VideoError for what its checks refuse."""
    try:
        indices, in_range = _frame_choice(ele, info.frames, info.fps)
        return indices, in_range, _frame_size(ele, len(indices), info.height, info.width, patch)
    except ValueError as e:  # qwen-vl-utils' checks of the range and the frame counts
        raise VideoError(f"cannot sample frames from {path}: {e}") from None


def read_sampled(path: str, indices: list[int], info: VideoInfo, opts: VideoOptions, written=None, out=None,
                 before_decord=None, in_order: bool = False):
    """(frames uint8 [len(indices), H, W, 3], backend) by opts.reader: the parallel reader (read_frames' `written`,
    `out` and `in_order`) where it numbers the frames as decord does, else decord, which then calls `before_decord()`
    first, fills `out` and passes `written` every slot at once. Raises what the readers raise."""
    frames = (_read_parallel(path, indices, info, opts, written, out, in_order)
              if opts.reader == "parallel" else None)
    if frames is not None:
        return frames, PARALLEL_BACKEND
    import decord

    if before_decord is not None:
        before_decord()
    frames = decord.VideoReader(path).get_batch(indices).asnumpy()  # ffmpeg's threads, as qwen-vl-utils
    if out is not None:
        out[:] = frames
        frames = out
    if written is not None:
        written(list(range(len(indices))))
    return frames, "decord"


def _sample_decord(path: str, opts: VideoOptions, info: VideoInfo, model_type: str, device: str | None):
    indices, in_range, size = plan_video(path, opts, info, model_type)
    error = None
    with native_stderr_captured() as native:  # its lines are there once the block has ended
        try:
            frames, backend = read_sampled(path, indices, info, opts)
        except Exception as e:  # noqa: BLE001 - decord raises its own error types
            error = _first_line(e)
    if error is not None:
        raise VideoError(f"cannot decode frames of {path} ({_native_reason(native, error)}); re-encode it, "
                         "e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4")
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2)
    metadata = {"fps": info.fps, "frames_indices": indices, "total_num_frames": in_range, "video_backend": backend}
    return resize_frames(frames, size, pixels_device(opts, device)), metadata, info


def _frame_choice(ele: dict, total_frames: int, video_fps: float) -> tuple[list[int], int]:
    """qwen-vl-utils' sampled frame indices for `ele` (fps / nframes, min / max_frames, video_start / video_end) and
    the number of frames in its time range, computed as its decord reader does, with its helpers."""
    from qwen_vl_utils.vision_process import calculate_video_frame_range, smart_nframes

    start, end, in_range = calculate_video_frame_range(ele, total_frames, video_fps)
    n = smart_nframes(ele, total_frames=in_range, video_fps=video_fps)
    return torch.linspace(start, end, n).round().long().tolist(), in_range


def _frame_size(ele: dict, frames: int, height: int, width: int, patch: int) -> tuple[int, int]:
    """qwen-vl-utils' (height, width) for `frames` frames of height x width under ele's min_pixels, max_pixels and
    total_pixels (its defaults for missing keys), as its fetch_video sizes a video."""
    from qwen_vl_utils import vision_process as vp

    factor = patch * vp.SPATIAL_MERGE_SIZE
    floor = ele.get("min_pixels", vp.VIDEO_MIN_TOKEN_NUM * factor * factor)
    budget = ele.get("total_pixels", vp.MODEL_SEQ_LEN * factor * factor * 0.9)
    cap = max(min(vp.VIDEO_MAX_TOKEN_NUM * factor * factor, budget / frames * vp.FRAME_FACTOR), int(floor * 1.05))
    cap = min(ele.get("max_pixels", cap), cap)
    return vp.smart_resize(height, width, factor=factor, min_pixels=floor, max_pixels=cap)


def resize_frames(frames: torch.Tensor, size: tuple[int, int], device: str | None = None) -> torch.Tensor:
    """uint8 CPU frames [T, 3, H, W] resized to size (height, width) with qwen-vl-utils' filter (bicubic,
    antialiased) on `device` (None: the CPU), RESIZE_CHUNK frames at a time; returned as uint8 on the CPU, where the
    processor takes them as it always has."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    target = torch.device("cpu" if device is None else device)
    out = torch.empty((frames.shape[0], frames.shape[1], *size), dtype=torch.uint8)
    for i in range(0, frames.shape[0], RESIZE_CHUNK):
        part = frames[i:i + RESIZE_CHUNK].to(target)
        out[i:i + RESIZE_CHUNK] = tvf.resize(part, list(size), interpolation=InterpolationMode.BICUBIC,
                                             antialias=True).cpu()
    return out


def build_inputs(processor, model_config, video_path: str, question: str | None, opts: VideoOptions,
                 device: str | None = None, resize_device: str | None = None) -> PreparedVideo:
    """Chat prompt with one video and a question -> processor tensors, plus what was used.

    device: where the video processor rescales, normalises and patchifies the frames (transformers' `device`
    argument; None: the CPU). With the model's GPU, the uint8 frames travel there and the float pixels are made there.
    resize_device: where the decoded frames are resized to the sampled size (sample_frames; None: the CPU).
    With sampler="lmms_eval" both run on the CPU (pixels_device()).
    """
    model_type = check_model_type(model_config)
    frames, metadata, info = sample_frames(video_path, opts, model_type, resize_device)
    inputs = prompt_inputs(processor, frames, metadata, video_path, question, pixels_device(opts, device), opts,
                           model_type)
    return prepared_video(inputs, model_config, info, frames.shape[0], (frames.shape[-1], frames.shape[-2]))


def check_model_type(model_config) -> str:
    model_type = model_config.model_type
    if model_type not in VL_PATCH_SIZES:
        raise VideoError(f"video input needs a Qwen-VL model ({', '.join(VL_PATCH_SIZES)}), got {model_type!r}")
    return model_type


VISION_END = "<|vision_end|>"  # the token that closes a video in every Qwen-VL chat template


def video_messages(video_path: str, question: str, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one video and a question after it, after a system message if `system_prompt` is given
    (as lmms-eval's classes put theirs: a plain string)."""
    system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return system + [{"role": "user", "content": [{"type": "video", "video": video_path},
                                                  {"type": "text", "text": question}]}]


def processor_kwargs(processor, opts: VideoOptions | None, model_type: str | None) -> dict:
    """How the video processor is called on sampled frames (the whole video's prompt and, streamed, each batch of
    frame pairs): sampler="qwen" (and Qwen3-VL under "lmms_eval", whose class calls it so too): no resizing, no
    frame sampling. Qwen2-VL / Qwen2.5-VL under "lmms_eval": as their lmms-eval classes, whose processor resizes the
    (already sized) frames again under its min_pixels / max_pixels (their model_args) without the per-frame cap."""
    if opts is None or opts.sampler == "qwen" or model_type == "qwen3_vl":
        return {"do_resize": False, "do_sample_frames": False}
    size = processor.video_processor.size
    return {"size": {"shortest_edge": opts.min_pixels or size.shortest_edge,
                     "longest_edge": opts.max_pixels or size.longest_edge},
            "cap_pixels_per_frame": False}


def prompt_inputs(processor, frames: torch.Tensor, metadata: dict, video_path: str, question: str | None,
                  device: str | None = None, opts: VideoOptions | None = None, model_type: str | None = None) -> dict:
    """The processor's tensors for the chat prompt of one video (uint8 frames [T, 3, H, W], sized) and a question;
    question None: the prompt up to the end of the video (its last vision-end token included), a video prefix's.
    opts: its system_prompt and sampler; with sampler="lmms_eval" the processor is called as lmms-eval's class for
    `model_type` calls it: float frames, no video metadata for Qwen2-VL / Qwen2.5-VL (so Qwen2.5-VL's
    second_per_grid_ts come from the processor's default 24 fps), processor_kwargs."""
    messages = video_messages(video_path, "" if question is None else question, opts and opts.system_prompt)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    meta = {"fps": float(metadata["fps"]), "frames_indices": list(metadata["frames_indices"]),
            "total_num_frames": int(metadata["total_num_frames"])}
    on = {"device": str(device)} if device is not None else {}
    if opts is not None and opts.sampler == "lmms_eval":
        if model_type not in VL_PATCH_SIZES:
            raise ValueError(f"sampler='lmms_eval' needs the model type ({', '.join(VL_PATCH_SIZES)}), got {model_type!r}")
        extra = ({"video_metadata": [meta]} if model_type == "qwen3_vl"
                 else {"padding": True, "padding_side": "right"})
        inputs = dict(processor(text=[text], videos=[frames.float()], return_tensors="pt", **extra,
                                **processor_kwargs(processor, opts, model_type), **on))
    else:
        video_processor = getattr(processor, "video_processor", None)
        if getattr(video_processor, "cap_pixels_per_frame", False) is None:
            # The frames come sized by qwen-vl-utils, which applies the per-frame pixel cap (the reference
            # behaviour); with do_resize=False the flag changes nothing here, and setting it silences newer
            # transformers' warning.
            video_processor.cap_pixels_per_frame = True
        inputs = dict(processor(text=[text], videos=[frames], video_metadata=[meta], return_tensors="pt",
                                **processor_kwargs(processor, None, model_type), **on))
    if question is None:
        ids = inputs["input_ids"]
        end = int((ids[0] == processor.tokenizer.convert_tokens_to_ids(VISION_END)).nonzero()[-1]) + 1
        inputs = {k: v[:, :end] if isinstance(v, torch.Tensor) and v.shape[:2] == ids.shape else v
                  for k, v in inputs.items()}
    return inputs


def prepared_video(inputs: dict, model_config, info: VideoInfo, frames: int, frame_size: tuple[int, int]) -> PreparedVideo:
    video_token = getattr(model_config, "video_token_id", None)
    visual = int((inputs["input_ids"] == video_token).sum()) if video_token is not None else 0
    return PreparedVideo(inputs, info, frames, frame_size, visual, int(inputs["input_ids"].shape[1]))
