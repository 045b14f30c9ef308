"""Experiment (ninth session): the whole time from a video file to the first answer token, streamed
(VideoSession.load_video, streamed: decoding overlapped with the processor and the vision tower, then the decoder prefill)
against in a row (VideoSession(stream=False): decoding, processor, then the prefill), and streamed with the
decoder prefill pipelined in chunks (`--chunks N ...`: a session ChunkConfig, stream.stream_prefill), for dense and Prism,
Qwen2.5-VL-7B with random weights (bf16) on a generated 720p H.264 clip sampled at 2 fps. Each (mode, path) is warmed
up once on the clip itself (VideoQA's warm-up), then timed `--repeats` times, the paths interleaved. One JSON line per
run: first_token_s = video_s + prefill_s of its RunRecord; the answers of the two paths are compared per mode.

    python lab/first_token_probe.py --clip /tmp/clip300.mp4 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from prism_mm.pipelines import stream as stream_module
from prism_mm.pipelines.prefill import ChunkConfig, ChunkedPrefill
from prism_mm.pipelines.session import VideoSession
from prism_mm.pipelines.video import VideoOptions


class Timeline:
    """When each sampled frame landed, each vision-tower call and each decoder chunk ran inside a run: host seconds
    from start() and GPU seconds from an event recorded there (wrappers around stream._tower, ChunkedPrefill.step
    and the frame callback of stream.read_sampled; nothing is synchronised until summary())."""

    def __init__(self):
        self.calls = []
        tower, step, read = stream_module._tower, ChunkedPrefill.step, stream_module.read_sampled
        timed = self._timed

        def wrapped_tower(model, processor, frames, batch, *a):
            return timed("tower", len(batch), lambda: tower(model, processor, frames, batch, *a))

        def wrapped_step(prefill, *a):
            return timed("chunk", prefill.next, lambda: step(prefill, *a))

        def wrapped_read(*a, written, **k):
            def landed(slots):
                self.frames.append((time.perf_counter() - self.t0, len(slots)))
                return written(slots)
            return read(*a, written=landed, **k)

        stream_module._tower, stream_module.read_sampled = wrapped_tower, wrapped_read
        ChunkedPrefill.step = wrapped_step
        self.start()  # warm-ups go through the wrappers too

    def start(self):
        self.calls, self.frames = [], []
        self.gpu0 = torch.cuda.Event(enable_timing=True)
        self.gpu0.record()
        self.t0 = time.perf_counter()

    def _timed(self, kind, n, fn):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.perf_counter() - self.t0
        a.record()
        out = fn()
        b.record()
        self.calls.append((kind, n, t, time.perf_counter() - self.t0, a, b))
        return out

    def summary(self) -> dict:
        torch.cuda.synchronize()
        total = sum(n for _, n in self.frames) or 1
        seen, landed = 0, []
        for t, n in self.frames:
            seen += n
            landed.append((round(t, 3), round(seen / total, 3)))
        r = lambda x: round(x, 3)  # noqa: E731
        calls = [{"kind": kind, "n": n, "host": [r(t), r(u)],
                  "gpu": [r(self.gpu0.elapsed_time(a) / 1e3), r(self.gpu0.elapsed_time(b) / 1e3)]}
                 for kind, n, t, u, a, b in self.calls]
        step = max(1, len(landed) // 40)
        return {"frames_landed": landed[::step] + landed[-1:], "calls": calls}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--modes", nargs="+", default=["dense", "prism"])
    ap.add_argument("--chunks", type=int, nargs="*", default=[], help="decoder chunk sizes for pipelined paths")
    ap.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct")
    ap.add_argument("--no-in-a-row", action="store_true", help="skip the in-a-row path (measured before)")
    ap.add_argument("--threads-ab", action="store_true",
                    help="also stream (and pipeline) with the parallel reader's decoders in threads "
                         "(VideoOptions(decode_processes=False); not warmed up: they share the processes path's)")
    ap.add_argument("--in-a-row-chunks", action="store_true",
                    help="also run in a row with the decoder in chunks (--chunks): the chunked prefill's own cost")
    ap.add_argument("--one-pass", action="store_true",
                    help="also stream with the decoder in one pass after the stream (the session's stream_chunks off)")
    ap.add_argument("--timeline", action="store_true",
                    help="per run: when frames landed, each tower call and decoder chunk (host and GPU times)")
    args = ap.parse_args()
    emit = lambda **r: print(json.dumps({"cores": os.cpu_count(), "clip": os.path.basename(args.clip),
                                         "model": args.model, **r}),
                             flush=True)
    t = time.perf_counter()
    session = VideoSession(args.model, device="cuda", random_weights=True)
    emit(what="load", s=time.perf_counter() - t, device=session.device_name)
    question = "What happens in the video?"

    def answer(mode, stream, options):  # a fresh prefix every run: the first token as a new video's
        session.stream = stream
        session.set_attention(mode)
        session.prefixes.clear()
        return session.load_video(args.clip, options).ask(question, args.max_new_tokens)

    def in_a_row(mode, warmup, options=None):  # warm-up runs are whole runs now (the session keeps no stand-in path)
        return answer(mode, False, options)

    def streamed(mode, warmup, options=None):
        return answer(mode, True, options)

    def one_pass(mode, warmup, options=None):  # the stream with the decoder in one pass after it (no stream chunks)
        kept, session.stream_chunks = session.stream_chunks, None
        try:
            return streamed(mode, warmup, options)
        finally:
            session.stream_chunks = kept

    def pipelined(tokens):
        def run(mode, warmup, options=None):
            session.chunks = ChunkConfig(tokens)
            try:
                return streamed(mode, warmup, options)
            finally:
                session.chunks = None
        return run

    def in_threads(path):
        def run(mode, warmup):
            return path(mode, warmup, VideoOptions(decode_processes=False))
        run.no_warmup = True
        return run

    def chunked_in_a_row(tokens):
        def run(mode, warmup):
            session.chunks = ChunkConfig(tokens)
            try:
                return in_a_row(mode, warmup)
            finally:
                session.chunks = None
        return run

    default = (f"streamed (default: Prism pipelined in chunks of {session.stream_chunks.decoder_tokens}, dense one "
               "pass)") if session.stream_chunks else "streamed"
    paths = {**({} if args.no_in_a_row else {"in a row": in_a_row}), default: streamed,
             **({"streamed, one decoder pass": one_pass} if args.one_pass else {}),
             **({"streamed, decoders in threads": in_threads(streamed)} if args.threads_ab else {})}
    for n in args.chunks:
        paths[f"streamed, pipelined chunks of {n}"] = pipelined(n)
        if args.threads_ab:
            paths[f"streamed, pipelined chunks of {n}, decoders in threads"] = in_threads(pipelined(n))
        if args.in_a_row_chunks:
            paths[f"in a row, chunks of {n}"] = chunked_in_a_row(n)
    timeline = Timeline() if args.timeline else None
    for mode in args.modes:
        for name, run in paths.items():
            if getattr(run, "no_warmup", False):
                continue
            t = time.perf_counter()
            run(mode, True)
            emit(what="warm-up", mode=mode, path=name, s=time.perf_counter() - t)
    for r in range(args.repeats):
        for mode in args.modes:
            answers = {}
            for name, run in paths.items():
                if timeline is not None:
                    timeline.start()
                rec = run(mode, False)
                answers[name] = rec.answer
                if timeline is not None:
                    emit(what="timeline", mode=mode, path=name, repeat=r, **timeline.summary())
                emit(what="run", mode=mode, path=name, repeat=r, first_token_s=rec.first_token_s, video_s=rec.video_s,
                     vision_s=rec.vision_s, prefill_s=rec.prefill_s, decode_s=rec.decode_s,
                     visual_tokens=rec.visual_tokens, total_tokens=rec.total_tokens, mean_density=rec.mean_density,
                     sparse_layers=rec.sparse_layers, decoder_chunks=rec.decoder_chunks,
                     decoder_chunks_streamed=rec.decoder_chunks_streamed)
                torch.cuda.empty_cache()
            emit(what="answers", mode=mode, repeat=r, agree=len(set(answers.values())) == 1, answers=answers)
    emit(what="peak", gib=torch.cuda.max_memory_allocated() / 2**30)


if __name__ == "__main__":
    main()
