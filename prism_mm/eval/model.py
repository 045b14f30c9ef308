"""lmms-eval model `prism_qwen_vl`: Qwen2-VL / Qwen2.5-VL / Qwen3-VL with Prism (or dense) prefill.

model_args follow lmms-eval's Qwen-VL models where they mean the same (pretrained, device, device_map, batch_size,
max_pixels, min_pixels, max_num_frames, fps, total_pixels, system_prompt, interleave_visuals, use_cache,
reasoning_prompt, enable_thinking) plus attn=prism|dense, the PrismConfig fields (block_size, threshold,
threshold_high, threshold_low, min_sparse_len, max_density, calibrate, method, cutoff, dense_tail; those not given are
PrismConfig.video()'s), dtype, random_weights, stream, stream_chunk_tokens, and stats_dir: where per-sample records and
a summary are written (default ./prism_mm_stats).

preprocess=lmms_eval (the default) feeds the model what lmms-eval's own class for the checkpoint's family
(`qwen2_vl`, `qwen2_5_vl`, `qwen3_vl`; lmms-eval 0.7.3, --force_simple) feeds it: its system prompt, frame choice,
frame size, fps metadata (or none), dtype, model_arg defaults, stop strings and answer post-processing, decoding
greedily as its model.generate(do_sample=False) does (pipelines.prefill.Decoding); task_prompt=family (its default) gives each
question the task prompt lmms-eval gives that class (the task's lmms_eval_specific_kwargs entry for its name).
preprocess=qwen: qwen-vl-utils' fps / max_frames sampling, no system prompt, the prompt lmms-eval built for
prism_qwen_vl, greedy decoding to the model's generation_config EOS, the answer cut at "until" and stripped.
docs/evaluation.md, "lmms-eval parity".

generate_until groups the requests by video (the sampling options are the model's): each video's prefix (decoding,
processor, vision tower, decoder prefill; prism_mm.pipelines.session) is built once, its questions are answered from
it one after another, and the answers go back in lmms-eval's order. Each answer's RunRecord goes, as a dict with task,
doc_id, video and what made the answer (preprocess, family, task_prompt, system_prompt, question, dtype, sampling,
generation), into stats_dir/samples-<attn>-rank<r>.jsonl (in the order answered); see docs/evaluation.md.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .._optional import require
from ..config import PrismConfig
from ..pipelines.prefill import Decoding
from ..pipelines.prefix import text_after_video
from ..models import ATTENTIONS
from ..pipelines.session import DEFAULT_MODEL, STREAM_CHUNKS, Video, VideoSession, stream_chunks_of
from ..pipelines.video import VideoOptions, video_messages

lmms = require("lmms_eval.api.model", "eval", "the lmms-eval model prism_qwen_vl").lmms

# --- lmms-eval parity: what lmms-eval's own Qwen-VL classes do, for preprocess=lmms_eval (docs/evaluation.md). The
# frames, their size and the processor call are VideoOptions(sampler="lmms_eval")'s (pipelines.video); the decoding
# is pipelines.prefill.Decoding's (generate's greedy decoding with the checkpoint's generation_config).

# The library versions on which preprocess=lmms_eval was checked to feed the model what lmms-eval's classes feed it and
# to give their answers (tests/test_lmms_parity.py); with others the eval model warns and test_parity_versions fails.
PARITY_VERSIONS = {"lmms_eval": "0.7.3", "transformers": "5.23.0", "qwen_vl_utils": "0.0.14"}
LMMS_EVAL_SYSTEM_PROMPT = "You are a helpful assistant."  # the classes' system_prompt default


@dataclass(frozen=True)
class Family:
    """What lmms-eval's simple class for one Qwen-VL family does (lmms_eval/models/simple/<name>.py)."""

    name: str  # its lmms-eval model name: the task prompts (lmms_eval_specific_kwargs) it is given
    min_pixels: int  # model_arg defaults
    max_pixels: int
    dtype: str  # "bfloat16", or "checkpoint": from_pretrained(torch_dtype="auto")
    max_new_tokens: int  # when the task's generation_kwargs give none
    drops_double_newline: bool  # removes "\n\n" from the task's stop strings
    strips: bool  # cuts the tokens at the first EOS, the text at the earliest stop string, and strips it
    model_args: tuple[str, ...]  # the optional model_args it takes among fps, total_pixels, enable_thinking


FAMILIES = {
    "qwen2_vl": Family("qwen2_vl", 3136, 602112, "checkpoint", 128, False, True, ()),
    # Qwen2_5_VL takes fps but never uses it: refused here rather than ignored
    "qwen2_5_vl": Family("qwen2_5_vl", 256 * 28 * 28, 1605632, "bfloat16", 32768, True, False, ()),
    "qwen3_vl": Family("qwen3_vl", 256 * 28 * 28, 1605632, "bfloat16", 128, True, False,
                       ("fps", "total_pixels", "enable_thinking")),
}


def installed_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for lib, dist in (("lmms_eval", "lmms_eval"), ("transformers", "transformers"), ("qwen_vl_utils", "qwen-vl-utils")):
        try:
            found[lib] = version(dist)
        except PackageNotFoundError:
            found[lib] = None
    return found


def version_mismatch() -> dict[str, tuple[str | None, str]]:
    """{library: (installed, PARITY_VERSIONS')} for each library whose installed version is not the one parity was
    established on."""
    have = installed_versions()
    return {lib: (have[lib], want) for lib, want in PARITY_VERSIONS.items() if have[lib] != want}


def stop_strings(family: Family, gen_kwargs: dict, tokenizer) -> list[str]:
    """The stop strings lmms-eval's class cuts its answer at: the task's "until" (str or list; default the decoded
    EOS), without "\n\n" where the class drops it."""
    until = gen_kwargs.get("until", [tokenizer.decode(tokenizer.eos_token_id)])
    if isinstance(until, str):
        until = [until]
    elif not isinstance(until, list):
        raise ValueError(f"Expected `gen_kwargs['until']` to be of type Union[str, list], but got {type(until)}")
    return [u for u in until if u != "\n\n"] if family.drops_double_newline else list(until)


def answer_text(family: Family, tokenizer, tokens: torch.Tensor, until: list[str], enable_thinking=None) -> str:
    """The answer lmms-eval's class returns for generated `tokens` [1, n]: decoded with skip_special_tokens and no
    clean-up of tokenization spaces, then cut as the class cuts it (family.strips: tokens up to the first EOS, text up
    to the earliest stop string, stripped; else at each stop string in turn, unstripped; then Qwen3-VL's thinking
    removed with enable_thinking)."""
    ids = tokens.reshape(-1)
    if family.strips:
        eos = (ids == tokenizer.eos_token_id).nonzero()
        if len(eos):
            ids = ids[:int(eos[0])]
    text = tokenizer.batch_decode([ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
    if family.strips:
        stop = len(text)
        for term in until:
            if term and term in text:
                stop = min(stop, text.index(term))
        return text[:stop].strip()
    for term in until:
        if len(term) > 0:
            text = text.split(term)[0]
    if enable_thinking:
        text = text.partition("</think>")[2].strip()
    return text


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


# The PrismConfig fields model_args may set, with the conversion of their string values (threshold sets both bands).
CONFIG_ARGS = {"block_size": int, "threshold_high": float, "threshold_low": float, "min_sparse_len": int,
               "max_density": float, "calibrate": _bool, "method": str, "cutoff": float, "dense_tail": int}


PREPROCESS = ("lmms_eval", "qwen")


def checkpoint_model_type_and_dtype(pretrained: str, random_weights: bool) -> tuple[str, str]:
    """(model_type, the dtype from_pretrained(torch_dtype="auto") loads it in) of a checkpoint, from its config."""
    from ..models import SHIPPED_CONFIGS, _load_config, resolve_model, shipped_config

    if random_weights and pretrained in SHIPPED_CONFIGS:
        config = shipped_config(pretrained)
    else:
        config = _load_config(resolve_model(pretrained))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return config.model_type, str(dtype).replace("torch.", "")


class PrismQwenVL(lmms):
    def __init__(self, pretrained: str = DEFAULT_MODEL, attn: str = "prism", device: str | None = None,
                 device_map: str | None = None, batch_size: int | str = 1, max_pixels: int | None = None,
                 min_pixels: int | None = None, total_pixels: int | None = None, max_num_frames: int = 32,
                 fps: float | None = None, block_size: int | None = None, threshold: float | None = None,
                 threshold_high: float | None = None, threshold_low: float | None = None,
                 min_sparse_len: int | None = None, max_density: float | None = None, calibrate=None,
                 method: str | None = None, cutoff: float | None = None, dense_tail: int | None = None,
                 dtype: str | None = None,
                 random_weights=False, stream=True, stream_chunk_tokens: int = STREAM_CHUNKS.decoder_tokens,
                 stats_dir: str = "prism_mm_stats", preprocess: str = "lmms_eval", system_prompt: str | None = None,
                 task_prompt: str | None = None, interleave_visuals=False, use_cache=True,
                 reasoning_prompt: str | None = None, enable_thinking=None, **kwargs):
        super().__init__()
        if kwargs:
            raise ValueError(f"unknown prism_qwen_vl model_args: {sorted(kwargs)}")
        if int(batch_size) != 1:
            raise ValueError(f"prism_qwen_vl runs batch_size=1, got {batch_size} (a padded batch would run dense and, "
                             "in lmms-eval's classes, left-padded); use data parallelism (accelerate launch) for "
                             "throughput")
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess must be lmms_eval (as lmms-eval's own class for the model) or qwen "
                             f"(qwen-vl-utils' fps sampling), got {preprocess!r}")
        if _bool(interleave_visuals):
            raise ValueError("interleave_visuals=true: lmms-eval's classes then put the video at the question's "
                             "<image N> placeholder (or drop it where there is none); prism_qwen_vl answers from the "
                             "video's prefix, the video before the question: use interleave_visuals=false")
        if not _bool(use_cache):
            raise ValueError("use_cache=false: prism_qwen_vl decodes on the video's KV cache (its prefix); lmms-eval "
                             "would recompute the prompt at every step, which changes only float rounding: use "
                             "use_cache=true")
        model_type, checkpoint_dtype = checkpoint_model_type_and_dtype(pretrained, _bool(random_weights))
        self.preprocess = preprocess
        family = FAMILIES.get(model_type)
        if family is None:
            raise ValueError(f"{pretrained!r} is a {model_type} model; prism_qwen_vl takes Qwen2-VL, Qwen2.5-VL or "
                             "Qwen3-VL")
        self.family = family
        lmms_eval = preprocess == "lmms_eval"
        if lmms_eval:
            given = {"fps": fps, "total_pixels": total_pixels, "enable_thinking": enable_thinking}
            refused = [k for k, v in given.items() if v is not None and k not in family.model_args]
            if refused:
                raise ValueError(f"preprocess=lmms_eval: lmms-eval's {family.name} class takes no "
                                 f"{' / '.join(refused)} (Qwen2.5-VL's takes fps and ignores it; qwen-vl-utils "
                                 "samples at 2 fps and then keeps max_num_frames of those): drop it, or use "
                                 "preprocess=qwen")
            mismatch = version_mismatch()
            if mismatch:
                warnings.warn("preprocess=lmms_eval was checked against lmms-eval's classes on "
                              + ", ".join(f"{k} {want}" for k, (_, want) in mismatch.items()) + "; installed: "
                              + ", ".join(f"{k} {have}" for k, (have, _) in mismatch.items())
                              + " (rerun tests/test_lmms_parity.py)", stacklevel=2)
            min_pixels = family.min_pixels if min_pixels is None else min_pixels
            max_pixels = family.max_pixels if max_pixels is None else max_pixels
            if dtype is None:
                dtype = checkpoint_dtype if family.dtype == "checkpoint" else family.dtype
            if system_prompt is None:
                system_prompt = LMMS_EVAL_SYSTEM_PROMPT
            if task_prompt is None:
                task_prompt = "family"
        else:
            dtype = dtype or "auto"
            task_prompt = task_prompt or "as_given"
            if enable_thinking is not None:
                raise ValueError("enable_thinking is lmms-eval's Qwen3-VL class's: use it with preprocess=lmms_eval")
        # the lmms-eval model name whose task prompt each question gets (None: the one lmms-eval built for this run)
        self.task_prompt = task_prompt
        self.prompt_model = {"as_given": None, "family": family.name}.get(task_prompt, task_prompt)
        self.system_prompt = None if system_prompt is None else str(system_prompt)
        self.reasoning_prompt = reasoning_prompt.replace("\\n", "\n") if reasoning_prompt else None
        self.enable_thinking = None if enable_thinking is None else _bool(enable_thinking)
        self.dtype = dtype
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.local_process_index, self.accelerator.num_processes
        if self._world_size > 1:
            device, device_map = f"cuda:{self._rank}", f"cuda:{self._rank}"
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._device = torch.device(device)
        if threshold is not None:
            threshold_high = threshold_low = threshold
        given = {"block_size": block_size, "threshold_high": threshold_high, "threshold_low": threshold_low,
                 "min_sparse_len": min_sparse_len, "max_density": max_density, "calibrate": calibrate,
                 "method": method, "cutoff": cutoff, "dense_tail": dense_tail}
        # model_args arrive as strings: each given one converted to its PrismConfig field's type; the others are
        # PrismConfig.video()'s defaults
        self.prism_config = PrismConfig.video(**{k: CONFIG_ARGS[k](v) for k, v in given.items() if v is not None})
        if attn not in ATTENTIONS:
            raise ValueError(f"attn must be one of {', '.join(ATTENTIONS)}, got {attn!r}")
        self.attn, self.stream = attn, _bool(stream)  # stream: decode each video while the vision tower runs (default)
        # streamed in Prism mode: the decoder prefill pipelined in chunks of this many tokens (0: one pass after the
        # stream); dense runs stream with one pass
        self.session = VideoSession(pretrained, self.prism_config, device, dtype, _bool(random_weights), device_map,
                                    attn=attn, stream=self.stream,
                                    stream_chunks=stream_chunks_of(int(stream_chunk_tokens)))
        self.model, self.processor = self.session.model, self.session.processor
        if self.enable_thinking is not None and "enable_thinking" in str(getattr(self.processor, "chat_template", "")):
            raise ValueError("enable_thinking: this checkpoint's chat template reads it, and prism_qwen_vl does not "
                             "pass chat-template arguments yet; drop enable_thinking")
        # one-time costs (kernel compiles) paid here, once, not by the first video's questions
        self.warmup_s = self.session.warm_up() if self._device.type == "cuda" else None
        if lmms_eval:
            self.video_options = VideoOptions(fps=None if fps is None else float(fps), max_frames=int(max_num_frames),
                                              min_pixels=int(min_pixels), max_pixels=int(max_pixels),
                                              total_pixels=total_pixels and int(total_pixels), sampler="lmms_eval",
                                              system_prompt=self.system_prompt)
        else:
            self.video_options = VideoOptions(fps=float(fps) if fps else 2.0, max_frames=int(max_num_frames),
                                              min_pixels=min_pixels and int(min_pixels),
                                              max_pixels=max_pixels and int(max_pixels),
                                              total_pixels=total_pixels and int(total_pixels),
                                              system_prompt=self.system_prompt)
        self.stats_dir = Path(stats_dir)
        self.records: list[dict] = []
        self.pretrained = pretrained
        self._warned_sampling = False

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
        """(the answer to `context` as lmms-eval gets it back, its RunRecord as a dict with the settings it was made
        with): preprocess=lmms_eval: as the family's lmms-eval class answers (_ask_lmms_eval); preprocess=qwen: greedy
        to the generation_config's EOS, max_new_tokens 128 by default, cut at the first of "until" and stripped."""
        context = self._question(context)
        if self.preprocess == "lmms_eval":
            return self._ask_lmms_eval(video, context, gen_kwargs)
        max_new_tokens = int(gen_kwargs.get("max_new_tokens", 128))
        record = video.ask(context, max_new_tokens=max_new_tokens)
        text = record.answer
        until = [u for u in gen_kwargs.get("until", []) or [] if u]
        for stop in until:
            text = text.split(stop)[0]
        settings = {"max_new_tokens": max_new_tokens, "until": until, "eos_token_id": "generation_config",
                    "stripped": True, **self._sampling(gen_kwargs)}
        return text.strip(), self._record(dataclasses.replace(record, answer=text.strip()), context, settings)

    def _question(self, context: str) -> str:
        """The question text: lmms-eval's classes drop "<image>" placeholders and append reasoning_prompt to the
        stripped text (preprocess=qwen: reasoning_prompt only)."""
        if self.preprocess == "lmms_eval" and "<image>" in context:
            context = context.replace("<image>", "")
        if self.reasoning_prompt:
            context = context.strip() + self.reasoning_prompt
        return context

    def _sampling(self, gen_kwargs: dict) -> dict:
        """What the task asked for beyond greedy decoding (prism_qwen_vl decodes greedily; warned once)."""
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        beams = int(gen_kwargs.get("num_beams", 1) or 1)
        asked = temperature > 0 or beams > 1
        if asked and not self._warned_sampling:
            self._warned_sampling = True
            warnings.warn(f"the task asks for temperature={temperature}, num_beams={beams}; prism_qwen_vl decodes "
                          "greedily (lmms-eval's classes would sample or search)", stacklevel=3)
        return {"greedy": True, "sampling_requested": asked}

    def _ask_lmms_eval(self, video: Video, context: str, gen_kwargs: dict) -> tuple[str, dict]:
        family, tokenizer = self.family, self.processor.tokenizer
        until = stop_strings(family, gen_kwargs, tokenizer)
        max_new_tokens = int(gen_kwargs.get("max_new_tokens", family.max_new_tokens))
        decoding = Decoding.from_generation_config(self.model.generation_config, max_new_tokens, tokenizer.eos_token_id)
        ids = text_after_video(self.processor, video_messages(video.path, context, self.system_prompt))
        record, answer = video.answer(ids, decoding)
        text = answer_text(family, tokenizer, answer.tokens, until, self.enable_thinking)
        settings = {**decoding.to_dict(), "until": until, "stripped": family.strips,
                    "enable_thinking": self.enable_thinking, **self._sampling(gen_kwargs)}
        return text, self._record(dataclasses.replace(record, answer=text), context, settings)

    def _record(self, record, context: str, generation: dict) -> dict:
        """The RunRecord as a dict with what the answer was made with: preprocessing, prompt, generation settings."""
        o = self.video_options
        return {**record.to_dict(), "preprocess": self.preprocess, "family": self.family.name,
                "task_prompt": self.prompt_model or "as_given", "system_prompt": self.system_prompt,
                "question": context, "dtype": str(self.model.dtype).replace("torch.", ""),
                "sampling": {"sampler": o.sampler, "fps": o.fps, "max_frames": o.max_frames,
                             "min_pixels": o.min_pixels, "max_pixels": o.max_pixels, "total_pixels": o.total_pixels},
                "generation": generation}

    def generate_until(self, requests) -> list[str]:
        """Answers in the order of `requests`, computed a video at a time: the requests are grouped by video (the
        sampling options are the model's, the same for all), in the order each video first appears; each video's
        prefix is built once and all its questions are answered from it, one after another."""
        groups: dict[str, list[int]] = {}
        asked = [self._request(req) for req in requests]
        for i, (path, _) in enumerate(asked):
            groups.setdefault(path, []).append(i)
        answers: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc=f"prism_qwen_vl ({self.attn})", disable=self._rank != 0) as bar:
            for path, indices in groups.items():
                video = self.session.load_video(path, self.video_options)
                for i in indices:
                    _, gen_kwargs, _, doc_id, task, _ = requests[i].args
                    answers[i], record = self._ask(video, asked[i][1], dict(gen_kwargs))
                    self.records.append({"task": task, "doc_id": doc_id, "video": path, **record})
                    bar.update(1)
                # no later request needs this prefix: drop the handle and the store's entry, so that it is freed
                # before the next video's is built
                del video
                self.session.prefixes.clear()
        self.write_stats()
        return answers

    def _request(self, req) -> tuple[str, str]:
        """(the absolute path of the request's one video, its question text as lmms-eval built it for the run, or,
        with a task_prompt model name, as lmms-eval builds it for that model: _task_prompt); ValueError otherwise."""
        context, _, doc_to_visual, doc_id, task, split = req.args
        doc = self.task_dict[task][split][doc_id]
        if self.prompt_model is not None:
            context, visuals = self._task_prompt(req, doc)
        else:
            visuals = doc_to_visual(doc)
        videos = [v for v in (visuals or []) if isinstance(v, str)]
        if len(videos) != 1:
            raise ValueError(f"prism_qwen_vl expects one video per question, got {len(videos)} visuals "
                             f"({task} doc {doc_id})")
        return os.path.abspath(videos[0]), context

    def _task_prompt(self, req, doc) -> tuple[str, list]:
        """(context, visuals) of the request as lmms-eval builds them for the model name self.prompt_model: the task's
        lmms_eval_specific_kwargs entry for that name (where the task has none, what it gave this run: its default)
        in place of this run's, through the task's own doc_to_text and doc_to_visual; the context's text before the
        question (a task description) is kept."""
        context, _, doc_to_visual, doc_id, task, _ = req.args
        task_obj = getattr(doc_to_visual, "__self__", None)
        config = getattr(task_obj, "config", None)
        every = getattr(config, "lmms_eval_specific_kwargs", None)
        if task_obj is None or config is None or not hasattr(task_obj, "doc_to_text"):
            raise ValueError(f"task_prompt={self.task_prompt}: the request of {task} doc {doc_id} does not come from an "
                             "lmms-eval Task (its doc_to_visual is not bound to one); use task_prompt=as_given")
        entry = every.get(self.prompt_model) if isinstance(every, dict) else None
        if not isinstance(entry, dict):  # no entry for that name: lmms-eval gives it the default, as it gave this run
            return context, doc_to_visual(doc)
        own = task_obj.lmms_eval_specific_kwargs
        given = task_obj.doc_to_text(doc)
        if int(getattr(config, "num_fewshot", 0) or 0) > 0 or not isinstance(given, str) or not context.endswith(given):
            raise ValueError(f"task_prompt={self.task_prompt}: {task}'s prompt is not its doc_to_text alone (few-shot "
                             "examples or a chat template), which prism_qwen_vl cannot rebuild; use "
                             "task_prompt=as_given")
        task_obj.lmms_eval_specific_kwargs = entry
        try:
            text, visuals = task_obj.doc_to_text(doc), task_obj.doc_to_visual(doc)
        finally:
            task_obj.lmms_eval_specific_kwargs = own
        return context[:len(context) - len(given)] + text, visuals

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
                   "warmup_s": self.warmup_s, "preprocess": self.preprocess, "family": self.family.name,
                   "task_prompt": self.prompt_model or "as_given", "system_prompt": self.system_prompt,
                   "dtype": str(self.model.dtype).replace("torch.", ""),
                   "video_options": {k: v for k, v in dataclasses.asdict(self.video_options).items()
                                     if k in ("fps", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                                              "sampler")},
                   "versions": installed_versions(),
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
