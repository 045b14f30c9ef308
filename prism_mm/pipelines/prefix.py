"""A video's prefix: the decoder's KV cache of the prompt up to the end of the video, built once and reused by
every question about that video.

In the Qwen-VL chat template the video comes before the question. Prism selects each query block's key blocks from
causal keys only, and every row after the video runs dense (the question chunk, see `ask`), so the cache of the
prompt up to the last vision-end token does not depend on the question: an answer from a kept prefix equals a fresh
run chunked at the same boundary, bit for bit (tests/test_prefix.py).

    prefix, built = session.prefix(path, VideoOptions())          # VideoSession: kept, or built now (_build)
    ids = text_after_video(processor, video_messages(path, question))
    answer = ask(model, prefix, ids, Decoding(max_new_tokens=32))  # answer.tokens, .question_s, .first_logits

PrefixStore keeps prefixes of one loaded model under a memory budget (least recently used first out), optionally
moving the ones it evicts from the GPU to pinned CPU memory.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..models import dense_rows, synchronize_gpus
from .prefill import Decoding, PrefillState, greedy_decode, new_cache
from .video import VISION_END, VideoOptions

# VideoOptions fields that change a prefix: which frames are read, at what size, by whose rules (sampler), and the
# system prompt before the video; the others only choose how the file is decoded (the same frames, byte for byte:
# tests/test_frames.py), so they are not part of a prefix's key.
SAMPLING_FIELDS = ("fps", "max_frames", "min_pixels", "max_pixels", "total_pixels", "start", "end", "sampler",
                   "system_prompt")


def sampling_key(options: VideoOptions) -> tuple:
    """The sampling part of a prefix key (also what groups lmms-eval requests by video)."""
    return tuple(getattr(options, f) for f in SAMPLING_FIELDS)


def file_identity(path: str) -> tuple:
    """The identity of a file's content as the file system tells it: absolute path, device, inode, size, and
    modification and status-change times in ns (a file rewritten in place changes mtime / ctime; no copy tool can set
    ctime back). OSError for a missing file."""
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@dataclass(frozen=True)
class PrefixKey:
    """What a prefix depends on: the loaded model, the attention that built it (dense, or the PrismConfig with the
    vision attention and the decoder chunks, which change Prism's selections), the file and the sampling options.
    The processor is the loaded model's own, so the model part covers it."""

    model: str
    attention: tuple
    file: tuple
    sampling: tuple

    @classmethod
    def of(cls, model: str, attention: tuple, path: str, options: VideoOptions) -> "PrefixKey":
        return cls(model, attention, file_identity(path), sampling_key(options))


@dataclass
class PrefixBuild:
    """How a prefix was built, for the first question's record: seconds of the streamed (or in-a-row) video stage and
    of the decoder prefill left after it, the tower's share, the decoder chunks and what Prism did."""

    video_s: float
    prefill_s: float
    vision_s: float | None
    streamed: bool
    decoder_chunks_streamed: int = 0
    decoder_chunks: int = 1
    mean_density: float | None = 1.0
    sparse_layers: int = 0
    layers: int = 0
    dense_reasons: list[str] = field(default_factory=list)
    layer_report: list[dict] = field(default_factory=list)
    layers_vs_dense: list[dict] = field(default_factory=list)  # compare mode's check of a one-chunk Prism prefix

    @property
    def seconds(self) -> float:
        return self.video_s + self.prefill_s


@dataclass(frozen=True)
class PrefixInfo:
    """What a prefix is, without its cache (holding it keeps no device memory): for reports."""

    tokens: int
    frames: int
    frame_size: tuple[int, int]
    visual_tokens: int
    video_seconds: float
    build: PrefixBuild


@dataclass
class VideoPrefix:
    """The KV cache of a prompt up to the end of its video (one (keys, values) pair per decoder layer, never written
    after it is built: each question copies it into a cache of its own) and what later tokens need: the prefix length
    and the MRoPE rope_deltas (a text token at prompt position p has MRoPE position p + rope_deltas on every axis)."""

    key: PrefixKey
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    tokens: int
    rope_deltas: torch.Tensor
    frames: int
    frame_size: tuple[int, int]
    visual_tokens: int
    video_seconds: float
    build: PrefixBuild
    input_ids: torch.Tensor | None = None  # [1, tokens] on the CPU: what logits processors that read the prompt see
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        self.device = self.layers[0][0].device

    @property
    def info(self) -> PrefixInfo:
        return PrefixInfo(self.tokens, self.frames, self.frame_size, self.visual_tokens, self.video_seconds, self.build)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def to(self, device: torch.device | str) -> None:
        """Move the cache to `device` (to the CPU: into pinned memory when CUDA is there, so it comes back fast)."""
        device = torch.device(device)
        pin = device.type == "cpu" and torch.cuda.is_available()

        def move(t: torch.Tensor) -> torch.Tensor:
            moved = t.to(device, non_blocking=not pin)
            return moved.pin_memory() if pin else moved

        self.layers = [(move(k), move(v)) for k, v in self.layers]
        self.rope_deltas = self.rope_deltas.to(device)
        self.device = device

    def cache(self, config):
        """A new DynamicCache holding a copy of the prefix (the question and its answer extend the copy)."""
        cache = new_cache(config)
        for i, (k, v) in enumerate(self.layers):
            cache.update(k, v, i)
        return cache


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of each layer of a DynamicCache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class PrefixStore:
    """The prefixes of one loaded model, least recently used first out.

    device_bytes: what the prefixes on the model's device may hold together (None: no bound); a prefix is kept even
    when it alone exceeds it, until the next one comes. cpu_bytes: what evicted prefixes may hold offloaded to (pinned)
    CPU memory (0: evicted prefixes are dropped); one asked for again moves back to the device."""

    def __init__(self, device_bytes: int | None = None, cpu_bytes: int = 0):
        for name, value in (("device_bytes", device_bytes), ("cpu_bytes", cpu_bytes)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"PrefixStore {name} must be an int >= 0 (bytes), got {value!r}")
        self.device_bytes, self.cpu_bytes = device_bytes, cpu_bytes or 0
        self._kept: OrderedDict[PrefixKey, VideoPrefix] = OrderedDict()
        self._offloaded: set[PrefixKey] = set()
        self.hits = self.misses = self.evicted = 0

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: PrefixKey) -> bool:
        return key in self._kept

    def get(self, key: PrefixKey, device: torch.device | str) -> VideoPrefix | None:
        """The prefix kept for `key` (moved back to `device` if it was offloaded), or None."""
        prefix = self._kept.get(key)
        if prefix is None:
            self.misses += 1
            return None
        self.hits += 1
        self._kept.move_to_end(key)
        if key in self._offloaded:
            prefix.to(device)
            self.put(prefix)
        return prefix

    def restore(self, prefix: VideoPrefix, device: torch.device | str) -> None:
        """Put a prefix handed out earlier back on `device` if it was offloaded (or dropped from the CPU) since: its
        data never changes, so it still answers."""
        if prefix.key in self._offloaded and self._kept.get(prefix.key) is prefix:
            prefix.to(device)
            self.put(prefix)
        elif prefix.device.type != torch.device(device).type:
            prefix.to(device)

    def put(self, prefix: VideoPrefix) -> None:
        """Keep `prefix` (on the device) as the most recently used, evicting others to fit."""
        self._kept[prefix.key] = prefix
        self._kept.move_to_end(prefix.key)
        self._offloaded.discard(prefix.key)
        self._fit(keep=prefix.key)

    def clear(self) -> None:
        self._kept.clear()
        self._offloaded.clear()

    def _bytes(self, offloaded: bool) -> int:
        return sum(p.nbytes for k, p in self._kept.items() if (k in self._offloaded) == offloaded)

    def _fit(self, keep: PrefixKey) -> None:
        """Evict least recently used prefixes (never `keep`) until the device's share fits, offloading them while the
        CPU share allows, then drop the oldest offloaded ones until that share fits."""
        for key in list(self._kept):
            if self.device_bytes is None or self._bytes(offloaded=False) <= self.device_bytes:
                break
            if key == keep or key in self._offloaded:
                continue
            self.evicted += 1
            if self._kept[key].nbytes <= self.cpu_bytes:
                self._kept[key].to("cpu")
                self._offloaded.add(key)
            else:
                del self._kept[key]
        for key in list(self._kept):
            if self._bytes(offloaded=True) <= self.cpu_bytes:
                break
            if key in self._offloaded:
                del self._kept[key]
                self._offloaded.discard(key)

    def report(self) -> list[dict]:
        """One row per kept prefix, least recently used first: file, attention, tokens, bytes, offloaded or not."""
        return [{"file": k.file[0], "attention": k.attention[0], "tokens": p.tokens, "bytes": p.nbytes,
                 "offloaded": k in self._offloaded} for k, p in self._kept.items()]


def text_after_video(processor, messages: list[dict]) -> list[int]:
    """The token ids the chat template puts after the (last) video of `messages` (the question, the turns after it
    and the assistant header): the template's text after its last vision-end token, tokenized on its own. That
    token is special, so tokenizers split there: the prompt's ids are the prefix's followed by these (tested)."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    at = text.rfind(VISION_END)
    if at < 0:
        raise ValueError(f"the chat template put no {VISION_END} token in the prompt: the messages hold no video")
    return processor.tokenizer(text[at + len(VISION_END):], add_special_tokens=False)["input_ids"]


@dataclass
class Answer:
    """The tokens of one answer and its timings: question_s the dense chunk of the text after the video up to the
    first token's logits, decode_s the rest of the greedy decoding."""

    tokens: torch.Tensor  # [1, new tokens]
    question_s: float
    decode_s: float
    first_logits: torch.Tensor  # [1, vocab], the first answer token's
    cache: object  # the conversation's DynamicCache after the answer (its last token not yet fed)


def text_positions(start: int, count: int, rope_deltas: torch.Tensor, device) -> torch.Tensor:
    """MRoPE position ids [3, 1, count] of `count` text tokens from prompt position `start` after a video (the
    model's own rule for tokens after its visual input: position + rope_deltas on every axis)."""
    positions = torch.arange(start, start + count, device=device).view(1, 1, -1).expand(3, 1, -1)
    return positions + rope_deltas.to(device).view(1, -1, 1)


def extend(model, cache, ids: list[int], start: int, rope_deltas: torch.Tensor) -> torch.Tensor:
    """Run text tokens `ids` at prompt positions [start, start + len) as one chunk over `cache` (which it extends),
    every query attending to every earlier key; the last position's logits [1, vocab]."""
    device = model.device
    embeds = model.get_input_embeddings()(torch.tensor([ids], device=device))
    with torch.no_grad(), dense_rows(model):
        out = model.model.language_model(inputs_embeds=embeds, position_ids=text_positions(start, len(ids), rope_deltas,
                                                                                             device),
                                         past_key_values=cache, use_cache=True)
        return model.lm_head(out.last_hidden_state[:, -1:])[:, -1]


def ask(model, prefix: VideoPrefix, ids: list[int], decoding: Decoding, cache=None, fed: int = 0,
        on_token=None) -> Answer:
    """Answer from `prefix`: the text tokens `ids` after the video (the question and whatever the template puts after
    it) as one dense chunk, then greedy decoding as `decoding` says (its stop tokens and logits processors). `cache`
    (with `fed` tokens after the prefix already in it: a chat's earlier turns) continues a conversation; None starts
    from a copy of the prefix. on_token(token_id) is called per new token as it is chosen."""
    if not ids:
        raise ValueError("no tokens after the video to answer from")
    if cache is None:
        cache, fed = prefix.cache(model.config), 0
    processors = decoding.processors(model, prefix.tokens + fed + len(ids))
    prompt_ids = None
    if processors is not None:  # they read the prompt's ids (a repetition penalty, n-gram blocking)
        if fed or prefix.input_ids is None:
            raise ValueError("logits processors that read the prompt need a prefix's own token ids and no earlier "
                             "turns")
        prompt_ids = torch.cat([prefix.input_ids.reshape(1, -1).cpu(), torch.tensor([ids])], dim=1)
    cuda = prefix.device.type == "cuda"
    if cuda:
        synchronize_gpus()
    t0 = time.perf_counter()
    logits = extend(model, cache, ids, prefix.tokens + fed, prefix.rope_deltas)
    if cuda:
        synchronize_gpus()
    question_s = time.perf_counter() - t0
    model.model.rope_deltas = prefix.rope_deltas  # the decoding steps' positions (transformers' rule after a prefill)
    state = PrefillState(cache, logits, prefix.tokens + fed + len(ids))
    tokens = greedy_decode(model, state, decoding.max_new_tokens, decoding.eos_ids(model), on_token, processors,
                           prompt_ids)
    if cuda:
        synchronize_gpus()
    return Answer(tokens, question_s, time.perf_counter() - t0 - question_s, logits, cache)

