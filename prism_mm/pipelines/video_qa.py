"""Answer a question about a local video with a Qwen-VL model, Prism or dense attention.

    python -m prism_mm.pipelines.video_qa --video clip.mp4 --question "What happens?" \
        [--model Qwen/Qwen2.5-VL-7B-Instruct | /local/path | tiny-qwen2.5-vl] [--attn prism|dense|compare]

`tiny-qwen2.5-vl`, `tiny-qwen3-vl`, `tiny-qwen2-vl` are toy random-weight models (built once into
~/.cache/prism_mm) that run anywhere; `--random-weights` builds a real architecture from the shipped
configs. Both give meaningless answers: use them to check the pipeline and to measure speed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import PrismConfig
from .video import PreparedVideo, VideoError, VideoOptions, build_inputs

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
TINY_MODELS = {"tiny-qwen2-vl": "qwen2_vl", "tiny-qwen2.5-vl": "qwen2_5_vl", "tiny-qwen3-vl": "qwen3_vl"}


def resolve_model(name: str) -> str:
    """Tiny model names -> a local directory (built on first use); anything else unchanged."""
    if name not in TINY_MODELS:
        return name
    from ..tiny import save_tiny

    path = Path.home() / ".cache" / "prism_mm" / name
    if not (path / "config.json").exists() or not any(path.glob("*processor*")):
        save_tiny(TINY_MODELS[name], path)
    return str(path)


def load_video_model(model: str, prism: PrismConfig, device: str, dtype: str = "auto", random_weights: bool = False,
                     device_map=None):
    """(model, processor) for video QA: tiny names resolved, Prism enabled on the text decoder
    (switch with set_attention), a stand-in processor for random-weight architectures."""
    from ..models import VL_MODEL_TYPES, enable_prism, load_model

    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    vl_model, processor = load_model(resolve_model(model), attn="dense", dtype=dtype, device_map=device_map or device,
                                     random_weights=random_weights)
    if vl_model.config.model_type not in VL_MODEL_TYPES:
        raise ValueError(f"{model!r} is a {vl_model.config.model_type} model; video QA needs Qwen2-VL, "
                         "Qwen2.5-VL or Qwen3-VL")
    if processor is None:
        from ..tiny import build_tiny_processor

        # Shipped configs carry no tokenizer: a character-level stand-in builds the prompt.
        processor = build_tiny_processor(vl_model.config.model_type, real_vocab=True)
    enable_prism(vl_model, prism)
    return vl_model, processor


def set_attention(model, attn: str) -> None:
    """Switch the text decoder of a load_video_model() model between "prism" and dense SDPA."""
    model.set_attn_implementation({"text_config": "prism" if attn == "prism" else "sdpa"})


class _TokenProgress:
    """A transformers streamer that advances a tqdm bar per generated token."""

    def __init__(self, bar: tqdm):
        self.bar, self.first = bar, True

    def put(self, value):
        if self.first:  # the prompt
            self.first = False
            return
        self.bar.update(1)

    def end(self):
        self.bar.close()


@dataclass
class RunResult:
    attn: str
    answer: str
    prefill_s: float
    decode_s: float
    new_tokens: int
    mean_density: float | None
    sparse_layers: int
    layers: int = 0
    dense_reasons: list | None = None


class VideoQA:
    """Python API mirroring the CLI: VideoQA(model=..., attn=...)(video, question) -> dict."""

    def __init__(self, model: str = DEFAULT_MODEL, attn: str = "prism", prism: PrismConfig | None = None,
                 video: VideoOptions | None = None, max_new_tokens: int = 128, device: str | None = None,
                 dtype: str = "auto", random_weights: bool = False, progress: bool = True):
        if attn not in ("prism", "dense", "compare"):
            raise ValueError(f"attn must be prism, dense or compare, got {attn!r}")
        self.attn, self.video_opts, self.max_new_tokens, self.progress = attn, video or VideoOptions(), max_new_tokens, progress
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.prism_config = prism or PrismConfig.video()
        self.model_name = model
        self.model, self.processor = load_video_model(model, self.prism_config, self.device, dtype, random_weights)
        set_attention(self.model, "prism" if attn != "dense" else "dense")

    def prepare(self, video: str, question: str) -> PreparedVideo:
        with tqdm(total=1, desc="decoding video", disable=not self.progress, leave=False) as bar:
            prepared = build_inputs(self.processor, self.model.config, video, question, self.video_opts)
            bar.update(1)
        return prepared

    def _generate(self, inputs: dict, attn: str, max_new_tokens: int) -> RunResult:
        set_attention(self.model, attn)
        stats = self.model.prism_stats
        stats.reset()
        bar = tqdm(total=max_new_tokens, desc=f"generating ({attn})", disable=not self.progress, leave=False)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      streamer=_TokenProgress(bar))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        new = out[0, inputs["input_ids"].shape[1]:]
        answer = self.processor.batch_decode(new[None], skip_special_tokens=True)[0].strip()
        prefill = stats.prefill_seconds or 0.0
        summary = stats.summary()
        return RunResult(attn, answer, prefill, total - prefill, int(new.numel()),
                         stats.mean_density if attn == "prism" else 1.0, stats.sparse_layers if attn == "prism" else 0,
                         summary["layers"], summary["dense_reasons"] if attn == "prism" else [])

    def __call__(self, video: str, question: str, warmup: bool | None = None) -> dict:
        prepared = self.prepare(video, question)
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in prepared.inputs.items()}
        modes = ["dense", "prism"] if self.attn == "compare" else [self.attn]
        if warmup is None:  # one-time costs (kernel compiles, allocations) stay out of the timings
            warmup = self.device.startswith("cuda") or len(modes) > 1
        runs = {}
        for mode in modes:
            if warmup:  # compile kernels / allocate outside the timed run
                self._generate(inputs, mode, 1)
            runs[mode] = self._generate(inputs, mode, self.max_new_tokens)
        result = {
            "video": video, "question": question, "model": self.model_name,
            "random_weights": bool(getattr(self.model, "prism_random_weights", False)) or self.model_name in TINY_MODELS,
            "device": torch.cuda.get_device_name() if self.device.startswith("cuda") else "cpu",
            "frames": prepared.frames_used, "frame_size": list(prepared.frame_size),
            "visual_tokens": prepared.visual_tokens, "total_tokens": prepared.total_tokens,
            "video_seconds": round(prepared.info.duration, 3),
            "runs": {m: vars(r) for m, r in runs.items()},
        }
        main = runs.get("prism") or runs["dense"]
        result["answer"] = main.answer
        if len(runs) == 2:
            result["prefill_speedup"] = runs["dense"].prefill_s / max(runs["prism"].prefill_s, 1e-9)
            result["answers_agree"] = runs["dense"].answer == runs["prism"].answer
        return result


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prism_mm.pipelines.video_qa", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True, help="path of a local video file")
    ap.add_argument("--question", required=True)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local directory or tiny-qwen2.5-vl / tiny-qwen3-vl")
    ap.add_argument("--attn", choices=["prism", "dense", "compare"], default="prism")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--min-pixels", type=int)
    ap.add_argument("--max-pixels", type=int, help="per frame")
    ap.add_argument("--total-pixels", type=int, help="over all frames")
    ap.add_argument("--start", type=float, help="seconds")
    ap.add_argument("--end", type=float, help="seconds")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.93, help="top-p mass kept per band, in (0, 1]")
    ap.add_argument("--min-sparse-len", type=int, default=4096, help="shorter prompts run dense")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--random-weights", action="store_true", help="shipped architecture, random weights (speed runs)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def format_report(r: dict) -> str:
    lines = []
    if r["random_weights"]:
        lines.append("NOTE: random weights - the answer is meaningless; timings are real.")
    lines.append(f"answer: {r['answer']}")
    lines.append(f"frames: {r['frames']} at {r['frame_size'][0]}x{r['frame_size'][1]}  "
                 f"visual tokens: {r['visual_tokens']}  total tokens: {r['total_tokens']}  device: {r['device']}")
    for mode, run in r["runs"].items():
        dens = ""
        if mode == "prism" and run["mean_density"] is not None:
            dens = f"  mean density {run['mean_density']:.3f}, sparse in {run['sparse_layers']}/{run['layers']} layers"
            if run["dense_reasons"]:
                dens += f" (dense: {'; '.join(run['dense_reasons'])})"
        lines.append(f"{mode:>6}: prefill {run['prefill_s'] * 1e3:.1f} ms  decode {run['decode_s'] * 1e3:.1f} ms "
                     f"({run['new_tokens']} tokens){dens}")
    if "prefill_speedup" in r:
        lines.append(f"prefill speed-up: {r['prefill_speedup']:.2f}x  answers agree: {r['answers_agree']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        opts = VideoOptions(fps=args.fps, max_frames=args.max_frames, min_pixels=args.min_pixels,
                            max_pixels=args.max_pixels, total_pixels=args.total_pixels, start=args.start, end=args.end)
        prism = PrismConfig.video(block_size=args.block_size, min_sparse_len=args.min_sparse_len).with_threshold(args.threshold)
        from .video import check_range, probe

        check_range(probe(args.video), opts)  # fail fast on a bad video, before loading a model
        if args.no_progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        qa = VideoQA(args.model, args.attn, prism, opts, args.max_new_tokens, args.device, args.dtype,
                     args.random_weights, progress=not args.no_progress)
        result = qa(args.video, args.question)
    except (VideoError, ValueError, OSError) as e:  # ModelNotAvailableError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
