"""Experiment (eighth session): time from a video file to the vision tower's features, Qwen2.5-VL-7B (random
weights, bf16, prism_mm's varlen tower) on a generated 720p H.264 clip at 2 fps:
- "in a row": sample_frames (parallel reader or decord, resize on the GPU), the processor on the GPU, one tower call;
- "streamed": pipelines.stream.stream_video (decoding overlapped with the processor and the tower), per batch_pairs.
Features of the streamed run are checked against the in-a-row run's. One JSON line per measurement.

    python lab/stream_probe.py --seconds 300 --preset ultrafast --gop 250
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from reader_probe import write_clip  # noqa: E402

from prism_mm.pipelines.prefill import _vision_features  # noqa: E402
from prism_mm.pipelines.session import VideoSession  # noqa: E402
from prism_mm.pipelines.stream import stream_video  # noqa: E402
from prism_mm.pipelines.video import VideoOptions, prompt_inputs, sample_frames  # noqa: E402


def in_a_row(session, path, opts):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    frames, meta, _ = sample_frames(path, opts, "qwen2_5_vl", "cuda")
    t1 = time.perf_counter()
    inputs = prompt_inputs(session.processor, frames, meta, path, "What happens?", "cuda")
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    with torch.no_grad():
        feats, _ = _vision_features(session.model, inputs["pixel_values_videos"], inputs["video_grid_thw"].cuda(), None)
    torch.cuda.synchronize()
    t3 = time.perf_counter()
    return feats, {"sample_frames_s": t1 - t0, "processor_s": t2 - t1, "tower_s": t3 - t2, "s": t3 - t0}


def streamed(session, path, opts, batch_pairs):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    (feats, _), prepared = stream_video(session.model, session.processor, path, "What happens?", opts, "cuda",
                                        batch_pairs)
    torch.cuda.synchronize()
    return feats, {"s": time.perf_counter() - t0, "tokens": prepared.visual_tokens}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--preset", default="ultrafast")
    ap.add_argument("--gop", type=int, default=250)
    ap.add_argument("--batch-pairs", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    emit = lambda **r: print(json.dumps({"cores": os.cpu_count(), "clip_s": args.seconds, "preset": args.preset,
                                         "gop": args.gop, **r}), flush=True)
    session = VideoSession("Qwen/Qwen2.5-VL-7B-Instruct", device="cuda", random_weights=True)
    with tempfile.TemporaryDirectory() as tmp:
        warm, path = os.path.join(tmp, "warm.mp4"), os.path.join(tmp, "clip.mp4")
        write_clip(warm, 8, args.preset, args.gop)
        t = time.perf_counter()
        write_clip(path, args.seconds, args.preset, args.gop)
        emit(what="clip", write_s=time.perf_counter() - t)
        for reader in ("parallel", "decord"):  # warm-ups: kernels compiled, allocator grown
            in_a_row(session, warm, VideoOptions(reader=reader))
        for b in args.batch_pairs:
            streamed(session, warm, VideoOptions(), b)
        for r in range(args.repeats):
            reference = None
            for reader in ("parallel", "decord"):
                feats, row = in_a_row(session, path, VideoOptions(reader=reader))
                reference = feats if reference is None else reference
                emit(what="in a row", reader=reader, repeat=r, tokens=feats.shape[0], **row)
                del feats
            for b in args.batch_pairs:
                feats, row = streamed(session, path, VideoOptions(), b)
                err = float((feats.float() - reference.float()).norm() / reference.float().norm())
                emit(what="streamed", reader="parallel", batch_pairs=b, repeat=r, rel_err=err,
                     equal=bool(torch.equal(feats, reference)), **row)
                del feats
            del reference
            torch.cuda.empty_cache()
        emit(what="peak", gib=torch.cuda.max_memory_allocated() / 2**30)


if __name__ == "__main__":
    main()
