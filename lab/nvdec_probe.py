"""Experiment (seventh session): can the GPU's video decoders (NVDEC, through PyAV's CUDA hwaccel) replace decord's
CPU decoding, the largest stage left before the vision tower? Writes decode_probe's 60 s 720p H.264 clip, takes
decord's frames at qwen-vl-utils' 2 fps indices as the reference, then decodes all frames with PyAV on the CPU
(frame threads) and with hwaccel="cuda", converting the sampled ones to RGB; reports times and how far each is from
decord's pixels. One JSON line per measurement.

    python lab/nvdec_probe.py --seconds 60 > nvdec.jsonl
"""
from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import sys
import tempfile
import time

import av
import decord
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from decode_probe import write_clip  # noqa: E402


def pyav_frames(path: str, indices: list[int], hwaccel) -> np.ndarray:
    wanted, out = set(indices), []
    with av.open(path, **({"hwaccel": hwaccel} if hwaccel is not None else {})) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
    return np.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    emit = lambda **r: print(json.dumps({"cores": os.cpu_count(), "clip_s": args.seconds, **r}), flush=True)
    from av.codec.hwaccel import HWAccel, hwdevices_available

    emit(what="libs", nvcuvid=ctypes.util.find_library("nvcuvid"), hwdevices=list(hwdevices_available()))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        n = write_clip(path, args.seconds)
        indices = torch.linspace(0, n - 1, int(args.seconds * 2)).round().long().tolist()
        reference = decord.VideoReader(path).get_batch(indices).asnumpy()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            decord.VideoReader(path).get_batch(indices).asnumpy()
            emit(what="decord", frames=len(indices), s=time.perf_counter() - t0)
            for name, hw in (("pyav cpu", None), ("pyav cuda", "cuda")):
                try:
                    t0 = time.perf_counter()
                    got = pyav_frames(path, indices, None if hw is None else
                                      HWAccel(device_type=hw, allow_software_fallback=False))
                    s = time.perf_counter() - t0
                    diff = np.abs(got.astype(np.int16) - reference.astype(np.int16))
                    emit(what=name, frames=len(got), s=s, max_diff=int(diff.max()), equal=float((diff == 0).mean()))
                except Exception as e:  # noqa: BLE001 - report and go on
                    emit(what=name, error=f"{type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    main()
