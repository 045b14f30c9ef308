"""Reading sampled frames fast: decoded in parallel, one PyAV decoder per run of key-frame segments.

A 2 fps sample of a 30 fps video still decodes every frame (each depends on the ones before it, back to a key
frame), and one decoder does that at ~1,100 frames/s for 720p H.264: ~8 s for a 5-minute clip, longer than the
vision tower and the Prism prefill of its 128K visual tokens together (docs/lessons.md). The decoding is cut
at key frames instead:

1. An index pass demuxes the packets (no decoding) and numbers the frames in presentation order, as decord does
   (its frame i is the i-th smallest packet pts), and notes the key frames.
2. The wanted frames are grouped by the key frame each needs to start from, and the groups are joined into at most
   `workers` contiguous runs of about equal decoding work.
3. Each run gets its own container and decoder: it seeks to its first key frame, decodes forward, converts the
   frames it wants to RGB (rgb24, as decord converts them) and stops after its last. The decoders run in threads
   of this process, or with `processes=True` in processes (forked from a server that has this module loaded), each
   sending its frames over a socket that a thread of the caller reads straight into the output array. Threads share
   the caller's GIL: PyAV holds it for a few percent of each decoded frame (the frame objects, the loop), which 8
   decoders at 4 ffmpeg threads each add up to most of the GIL, so a caller with host work of its own while the
   frames decode (the pipelined prefill's GPU launches) waits on it (docs/lessons.md).

Files this cannot number as decord does (a packet without pts, a decoded frame whose pts no packet had, a stream
without key frames, or no PyAV) and containers whose seek is not by pts (anything but MP4 / MOV and Matroska / WebM;
MPEG-TS seeks by dts) raise FrameIndexError; callers read those with decord.

    index = FrameIndex.of(path)
    frames = read_frames(path, [0, 15, 30], index, workers=8)   # uint8 [3, H, W, 3]
"""
from __future__ import annotations

import bisect
import functools
import multiprocessing
import os
import pickle
import socket
import struct
import threading
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


def _decode_run(path: str, index: FrameIndex, start_key: int, frames: list[int], shape: tuple, threads: int,
                emit) -> None:
    """Decode from key frame `start_key` through the last of `frames` (sorted), calling emit(i, rgb) for each of them
    (rgb: uint8 `shape` = (H, W, 3))."""
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
                if rgb.shape != shape:
                    raise FrameIndexError(f"{path}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, the stream "
                                          f"{shape[1]}x{shape[0]}")
                emit(i, rgb)
                todo.discard(i)
            if i >= last and not todo:
                return
    if todo:
        raise FrameIndexError(f"{path}: frames {sorted(todo)[:4]} were not decoded")


def _into(out: np.ndarray, slots: dict[int, list[int]], written):
    """emit(i, rgb) for _decode_run in this process: frame i's rows of `out` filled, then written(those rows)."""
    def emit(i, rgb):
        for slot in slots[i]:
            out[slot] = rgb
        if written is not None:
            written(slots[i])
    return emit


def read_frames(path: str, indices: list[int], index: FrameIndex | None = None, workers: int | None = None,
                threads: int | None = None, written=None, out: np.ndarray | None = None,
                in_order: bool = False, processes: bool = False) -> np.ndarray:
    """Frames `indices` (decord's numbering; any order, repeats allowed) as uint8 [len(indices), H, W, 3] RGB, read by
    up to `workers` decoders in parallel (None: half the machine's cores, at most MAX_WORKERS), each with `threads`
    ffmpeg threads (None: twice the cores shared out among the runs, at most 16; on the H200 host's 16 cores 8
    decoders x 4 threads were the fastest of 7 splits, docs/lessons.md). `written(slots)`,
    when given, is called from the decoding threads with the output rows each frame has just filled (so a caller can
    use frames while others decode); `out`, when given, is the array filled (of the shape and dtype returned).
    in_order=True cuts IN_ORDER_RUNS runs per decoder, taken earliest first, so that the frames land roughly in
    time order (a consumer of `written` that needs the video's beginning first: the pipelined prefill).
    More than one run decodes in threads, or with processes=True (where forked decoder processes are available: see
    decoder_processes_available) in processes whose frames threads of this process receive; one run decodes in the
    calling thread. Either way `written` is called from threads of this process."""
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
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array {shape}, got {out.dtype} {out.shape}")
    runs = plan_runs(index, sorted(slots), workers * (IN_ORDER_RUNS if in_order else 1))
    if not runs:  # no frames asked for
        return out
    decoders = min(workers, len(runs))
    threads = threads or max(1, min(2 * cores // decoders, 16))
    if len(runs) == 1:
        _decode_run(path, index, *runs[0], shape[1:], threads, _into(out, slots, written))
        return out
    if processes and decoder_processes_available():
        try:
            _read_in_processes(path, index, runs, decoders, slots, out, threads, written)
            return out
        except _DecodersDied:  # the frames that landed are right: threads decode them all again
            pass
    emit = _into(out, slots, written)
    with ThreadPoolExecutor(max_workers=decoders) as pool:  # runs are taken in submission (time) order
        futures = [pool.submit(_decode_run, path, index, key, frames, shape[1:], threads, emit)
                   for key, frames in runs]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in finished and f.exception() is not None]
        if failed:
            for waiting in futures:  # runs not started yet are not decoded for nothing
                waiting.cancel()
            raise failed[0].exception()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# decoder processes
# ---------------------------------------------------------------------------------------------------------------------
_HEADER = struct.Struct("<qq")  # (frame number, or _DONE / _FAILED; payload bytes)
_DONE, _FAILED = -1, -2
_context = None


def decoder_processes_available() -> bool:
    """True where read_frames can fork its decoders from a server process: Linux and macOS; not inside a daemonic
    process (which may not have children) or a process still starting; and only where the main module is safe to
    import again. multiprocessing imports it in every child, so a script that runs prism_mm at its top level, without
    `if __name__ == "__main__":`, would run again in each decoder: such scripts decode in threads."""
    return ("forkserver" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
            and not getattr(multiprocessing.current_process(), "_inheriting", False) and _main_is_guarded())


def _main_is_guarded() -> bool:
    """True if the main module has no source file (an interactive session, a notebook) or its source runs its work
    under a top-level `if __name__ == "__main__":` (a CLI run with -m, a console script, a guarded script)."""
    import sys

    main = sys.modules.get("__main__")
    path = getattr(getattr(main, "__spec__", None), "origin", None) or getattr(main, "__file__", None)
    if not path:
        return True
    try:
        stamp = os.stat(path)
    except OSError:
        return False
    return _guarded(path, stamp.st_mtime_ns, stamp.st_size)


@functools.lru_cache(maxsize=8)
def _guarded(path: str, mtime_ns: int, size: int) -> bool:
    import ast

    try:
        tree = ast.parse(open(path, "rb").read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            sides = [node.test.left, *node.test.comparators]
            names = {n.id for n in sides if isinstance(n, ast.Name)}
            values = {n.value for n in sides if isinstance(n, ast.Constant)}
            if names == {"__name__"} and values == {"__main__"}:
                return True
    return False


class _DecodersDied(RuntimeError):
    """A decoder process could not start or ended without a word (killed, say): read_frames decodes in threads."""


def start_decoder_server() -> None:
    """Start, in the background, the server that forks the decoder processes (it imports this module once: about as
    long as importing torch). The first multi-run read_frames does it otherwise and waits for it; VideoSession
    calls it when it loads a model."""
    import importlib.util

    if decoder_processes_available() and importlib.util.find_spec("av") is not None:  # no PyAV: decord reads
        _fork_context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _fork_context():
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])  # a server started elsewhere already keeps its own preload
        _context = ctx
    return _context


def _read_in_processes(path, index, runs, decoders, slots, out, threads, written) -> None:
    """The runs in `decoders` processes (process w: runs w, w + decoders, ..., so that each works its way through the
    video in time order), each frame sent over the process's socket and received by a thread of this one into its
    rows of `out`, which then calls written(rows). The first failure (a decoder's error, or `written`'s) shuts every
    socket, which stops the other decoders at their next frame, and is raised once all have ended."""
    ctx = _fork_context()
    failures: list[BaseException] = []
    lock = threading.Lock()
    ends: list[socket.socket] = []
    stopping = threading.Event()

    def fail(error: BaseException) -> None:
        with lock:
            failures.append(error)
            stopping.set()
            for end in ends:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    procs, receivers = [], []
    try:
        for w in range(decoders):
            if stopping.is_set():
                break
            ours, theirs = socket.socketpair()
            with lock:
                ends.append(ours)
                if stopping.is_set():
                    ours.shutdown(socket.SHUT_RDWR)
            proc = ctx.Process(target=_decoder_main, name=f"prism_mm-decoder-{w}", daemon=True,
                               args=(path, index, runs[w::decoders], out.shape[1:], threads, theirs))
            try:
                proc.start()
            except Exception as e:  # noqa: BLE001 - the fork server could not start it: threads take over
                raise _DecodersDied(f"a decoder process did not start ({type(e).__name__}: {e})") from e
            finally:
                theirs.close()
            procs.append(proc)
            receiver = threading.Thread(target=_receive, args=(ours, proc, slots, out, written, fail, stopping),
                                        name=f"prism_mm-decoder-{w}-frames", daemon=True)
            receiver.start()
            receivers.append(receiver)
    except BaseException as e:  # noqa: BLE001 - the decoders started so far are stopped below
        fail(e)
    finally:
        for receiver in receivers:
            receiver.join()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for end in ends:
            end.close()
    if failures:
        raise failures[0]


def _receive(sock, proc, slots, out, written, fail, stopping) -> None:
    """One decoder's frames into `out` until it says it is done (or it fails, dies, or the read is stopped)."""
    header = bytearray(_HEADER.size)
    try:
        while True:
            if not _recv_exact(sock, memoryview(header)):
                break
            i, size = _HEADER.unpack(header)
            if i == _DONE:
                return
            if i == _FAILED:
                payload = bytearray(size)
                if _recv_exact(sock, memoryview(payload)):
                    fail(_error_from(bytes(payload)))
                    return
                break
            rows = slots[i]
            first = out[rows[0]]
            if size != first.nbytes or not _recv_exact(sock, memoryview(first).cast("B")):
                break
            for slot in rows[1:]:
                out[slot] = first
            if written is not None:
                written(rows)
    except BaseException as e:  # noqa: BLE001 - `written`'s (a stopped stream's) or the socket's: raised by the read
        fail(e)
        return
    if not stopping.is_set():
        proc.join(timeout=10)
        fail(_DecodersDied(f"a decoder process ended without finishing its frames (exit code {proc.exitcode})"))


def _recv_exact(sock, view: memoryview) -> bool:
    """Fill `view` from the socket; False at its end (or a shutdown) before that."""
    while len(view):
        n = sock.recv_into(view, len(view), socket.MSG_WAITALL)
        if n == 0:
            return False
        view = view[n:]
    return True


def _decoder_main(path, index, runs, shape, threads, sock) -> None:
    """A decoder process: its runs in order, each wanted frame sent as (frame number, bytes) + its rgb24 pixels, then
    _DONE; an error is sent pickled (_FAILED) instead. A closed socket (the reader stopped) ends it quietly."""
    def send(i, rgb):
        rgb = np.ascontiguousarray(rgb)  # PyAV's array is a view of the frame's padded rows where they are padded
        sock.sendall(_HEADER.pack(i, rgb.nbytes))
        sock.sendall(rgb)

    try:
        for key, frames in runs:
            _decode_run(path, index, key, frames, shape, threads, send)
        sock.sendall(_HEADER.pack(_DONE, 0))
    except OSError as e:
        if not isinstance(e, (BrokenPipeError, ConnectionResetError)):
            _send_error(sock, e)
    except BaseException as e:  # noqa: BLE001 - sent to the reader, which raises it
        _send_error(sock, e)
    finally:
        sock.close()


def _send_error(sock, error: BaseException) -> None:
    try:
        payload = pickle.dumps(error)
        pickle.loads(payload)  # av's errors, say, may not come back as they went
    except Exception:  # noqa: BLE001
        kind = FrameIndexError if _is_decode_error(error) else RuntimeError
        payload = pickle.dumps(kind(f"{type(error).__name__}: {error}"))
    try:
        sock.sendall(_HEADER.pack(_FAILED, len(payload)) + payload)
    except OSError:
        pass


def _is_decode_error(error: BaseException) -> bool:
    try:
        import av
    except ImportError:
        return False
    return isinstance(error, av.FFmpegError)


def _error_from(payload: bytes) -> BaseException:
    return pickle.loads(payload)
