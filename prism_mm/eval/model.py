"""lmms-eval model `prism_qwen_vl`: Qwen2-VL / Qwen2.5-VL / Qwen3-VL with Prism (or dense) prefill.

model_args follow lmms-eval's Qwen-VL models where they mean the same (pretrained, device,
device_map, batch_size, max_pixels, min_pixels, max_num_frames, fps) plus attn=prism|dense,
the PrismConfig fields (block_size, threshold, threshold_high, threshold_low, min_sparse_len,
max_density, calibrate, method, cutoff, dense_tail), total_pixels, dtype, random_weights, stream, stream_chunk_tokens,
and stats_dir: where per-sample records and a summary are written (default ./prism_mm_stats).

generate_until groups the requests by video (the sampling options are the model's): each video's prefix (decoding,
processor, vision tower, decoder prefill; prism_mm.pipelines.session) is built once, its questions are answered from
it one after another, and the answers go back in lmms-eval's order. Each answer's RunRecord goes, as a dict with task,
doc_id and video, into stats_dir/samples-<attn>-rank<r>.jsonl (in the order answered); see docs/evaluation.md.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from .._optional import require
from ..config import PrismConfig
from ..pipelines.session import STREAM_CHUNKS, Video, VideoSession, stream_chunks_of
from ..pipelines.video import VideoOptions

lmms = require("lmms_eval.api.model", "eval", "the lmms-eval model prism_qwen_vl").lmms


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class PrismQwenVL(lmms):
    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", attn: str = "prism", device: str | None = None,
                 device_map: str | None = None, batch_size: int | str = 1, max_pixels: int | None = None,
                 min_pixels: int | None = None, total_pixels: int | None = None, max_num_frames: int = 32,
                 fps: float | None = None, block_size: int = 128, threshold: float | None = None,
                 threshold_high: float = 0.93, threshold_low: float = 0.93, min_sparse_len: int = 4096,
                 max_density: float = 1.0, calibrate=True, method: str = PrismConfig.method,
                 cutoff: float = PrismConfig.cutoff, dense_tail: int = PrismConfig.dense_tail, dtype: str = "auto",
                 random_weights=False, stream=True, stream_chunk_tokens: int = STREAM_CHUNKS.decoder_tokens,
                 stats_dir: str = "prism_mm_stats", **kwargs):
        super().__init__()
        if kwargs:
            raise ValueError(f"unknown prism_qwen_vl model_args: {sorted(kwargs)}")
        if int(batch_size) != 1:
            raise ValueError("prism_qwen_vl runs batch_size=1 (padded batches would run dense); "
                             "use data parallelism (accelerate launch) for throughput")
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.local_process_index, self.accelerator.num_processes
        if self._world_size > 1:
            device, device_map = f"cuda:{self._rank}", f"cuda:{self._rank}"
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._device = torch.device(device)
        threshold_high = float(threshold if threshold is not None else threshold_high)
        threshold_low = float(threshold if threshold is not None else threshold_low)
        self.prism_config = PrismConfig(block_size=int(block_size), threshold_high=threshold_high,
                                        threshold_low=threshold_low, min_sparse_len=int(min_sparse_len),
                                        max_density=float(max_density), calibrate=_bool(calibrate),
                                        method=str(method), cutoff=float(cutoff), dense_tail=int(dense_tail))
        if attn not in ("prism", "dense"):
            raise ValueError(f"attn must be prism or dense, got {attn!r}")
        self.attn, self.stream = attn, _bool(stream)  # stream: decode each video while the vision tower runs (default)
        # streamed in Prism mode: the decoder prefill pipelined in chunks of this many tokens (0: one pass after the
        # stream); dense runs stream with one pass
        self.session = VideoSession(pretrained, self.prism_config, device, dtype, _bool(random_weights), device_map,
                                    attn=attn, stream=self.stream,
                                    stream_chunks=stream_chunks_of(int(stream_chunk_tokens)))
        self.model, self.processor = self.session.model, self.session.processor
        # one-time costs (kernel compiles) paid here, once, not by the first video's questions
        self.warmup_s = self.session.warm_up() if self._device.type == "cuda" else None
        self.video_options = VideoOptions(fps=float(fps) if fps else 2.0, max_frames=int(max_num_frames),
                                          min_pixels=min_pixels and int(min_pixels), max_pixels=max_pixels and int(max_pixels),
                                          total_pixels=total_pixels and int(total_pixels))
        self.stats_dir = Path(stats_dir)
        self.records: list[dict] = []
        self.pretrained = pretrained

    # lmms-eval plumbing
    @property
    def batch_size(self):
        return 1

    @property
    def device(self):
        return self._device

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def loglikelihood(self, requests):
        raise NotImplementedError("prism_qwen_vl implements generate_until only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("prism_qwen_vl implements generate_until only")

    def _ask(self, video: Video, context: str, gen_kwargs: dict) -> tuple[str, dict]:
        """(the answer cut at the first of gen_kwargs' "until" strings, its RunRecord as a dict)."""
        record = video.ask(context, max_new_tokens=int(gen_kwargs.get("max_new_tokens", 128)))
        text = record.answer
        for stop in [u for u in gen_kwargs.get("until", []) or [] if u]:
            text = text.split(stop)[0]
        return text.strip(), dataclasses.replace(record, answer=text.strip()).to_dict()

    def generate_until(self, requests) -> list[str]:
        """Answers in the order of `requests`, computed a video at a time: the requests are grouped by video (the
        sampling options are the model's, the same for all), in the order each video first appears; each video's
        prefix is built once and all its questions are answered from it, one after another."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(self._video_of(req), []).append(i)
        answers: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc=f"prism_qwen_vl ({self.attn})", disable=self._rank != 0) as bar:
            for path, indices in groups.items():
                video = self.session.load_video(path, self.video_options)
                for i in indices:
                    context, gen_kwargs, _, doc_id, task, _ = requests[i].args
                    answers[i], record = self._ask(video, context, dict(gen_kwargs))
                    self.records.append({"task": task, "doc_id": doc_id, "video": path, **record})
                    bar.update(1)
                # no later request needs this prefix: drop the handle and the store's entry, so that it is freed
                # before the next video's is built
                del video
                self.session.prefixes.clear()
        self.write_stats()
        return answers

    def _video_of(self, req) -> str:
        """The absolute path of the one video of an lmms-eval request; ValueError otherwise."""
        _, _, doc_to_visual, doc_id, task, split = req.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        videos = [v for v in (visuals or []) if isinstance(v, str)]
        if len(videos) != 1:
            raise ValueError(f"prism_qwen_vl expects one video per question, got {len(videos)} visuals "
                             f"({task} doc {doc_id})")
        return os.path.abspath(videos[0])

    def write_stats(self) -> Path:
        """Per-sample JSONL + a summary JSON in stats_dir (one pair per process rank)."""
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        suffix = f"{self.attn}-rank{self._rank}"
        with open(self.stats_dir / f"samples-{suffix}.jsonl", "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        records = self.records
        built = [r for r in records if not r["reused"]]  # one per prefix built: the answer that paid for it
        dens = [r["mean_density"] for r in built if r["mean_density"] is not None]

        def mean(values):
            return sum(values) / len(values) if values else None

        summary = {"model": self.pretrained, "attn": self.attn, "prism_config": vars(self.prism_config),
                   "warmup_s": self.warmup_s,
                   "videos": len({r["video"] for r in records}), "questions": len(records),
                   "prefixes_built": len(built),
                   # every second of the run (prefix builds included) over the questions answered
                   "seconds_per_question": mean([r["total_s"] for r in records]),
                   "total_first_token_s": sum(r["first_token_s"] for r in records),
                   # per prefix built
                   "streamed": sum(bool(r["streamed"]) for r in built),
                   "total_prefill_s": sum(r["prefill_s"] for r in built),
                   "mean_prefill_s": mean([r["prefill_s"] for r in built]),
                   "mean_density": mean(dens),
                   "mean_visual_tokens": mean([r["visual_tokens"] for r in built]),
                   # prefixes whose decoder chunks ran partly inside the stream: their prefill_s is what was left
                   # after it, so the prefill speed-up below is left out when either run has any
                   "pipelined": sum(r["decoder_chunks_streamed"] > 0 for r in built)}
        other = self.stats_dir / f"summary-{'dense' if self.attn == 'prism' else 'prism'}-rank{self._rank}.json"
        if other.exists():  # a run with the other attention already wrote here: report the speed-up
            o = json.loads(other.read_text())
            if o.get("total_prefill_s") and summary["total_prefill_s"] and not (o.get("pipelined") or summary["pipelined"]):
                dense_s = o["total_prefill_s"] if self.attn == "prism" else summary["total_prefill_s"]
                prism_s = summary["total_prefill_s"] if self.attn == "prism" else o["total_prefill_s"]
                summary["prefill_speedup_prism_vs_dense"] = dense_s / prism_s
            if o.get("total_first_token_s") and summary["total_first_token_s"]:
                mine, theirs = summary["total_first_token_s"], o["total_first_token_s"]
                summary["first_token_speedup_prism_vs_dense"] = theirs / mine if self.attn == "prism" else mine / theirs
        path = self.stats_dir / f"summary-{suffix}.json"
        path.write_text(json.dumps(summary, indent=1))
        return path
