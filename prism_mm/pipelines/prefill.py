"""Chunked prefill of a Qwen-VL model: peak memory bounded by chunk sizes instead of the prompt length.

    state = chunked_prefill(model, inputs, ChunkConfig(decoder_tokens=16384, vision_frames=32))
    tokens = greedy_decode(model, state, max_new_tokens=32)

Decoding: transformers' generate(do_sample=False) with a checkpoint's generation_config (the stop tokens and the logits
processors that act even in greedy decoding), as greedy_decode's eos_token_id / logits_processor / prompt_ids.

- The vision tower runs `vision_frames` temporal patches at a time (its attention never crosses frames, so the
  features are those of one call), and the features are scattered into the prompt's embeddings.
- The text decoder runs `decoder_tokens` query tokens at a time against a growing KV cache (each chunk's queries
  are the last positions of its keys: the convention prism_attention and its kernels take). The MRoPE positions are
  the model's own (get_rope_index over the whole prompt), sliced per chunk.
- Only the last position's logits are computed. At thresholds 1.0 (or with dense attention) the result equals the
  unchunked forward; with a sparse selection each chunk selects its own blocks, so answers may differ slightly.
- Dense (SDPA) chunks get transformers' [chunk, prompt] mask: peak memory is bounded by the chunks only with Prism.

Chunks use the model's attention as set (prism or sdpa). Without padding the decoder's attention gets no mask
(prism_mm registers a mask function that skips it), so no [chunk, prompt] mask is ever built for Prism.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ChunkConfig:
    """decoder_tokens: query tokens per decoder chunk; vision_frames: temporal patches per vision-tower call
    (None: the whole video at once)."""

    decoder_tokens: int = 16384
    vision_frames: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.decoder_tokens, int) or self.decoder_tokens < 1:
            raise ValueError(f"ChunkConfig.decoder_tokens must be an int >= 1, got {self.decoder_tokens!r}")
        if self.vision_frames is not None and (not isinstance(self.vision_frames, int) or self.vision_frames < 1):
            raise ValueError(f"ChunkConfig.vision_frames must be an int >= 1 or None, got {self.vision_frames!r}")


@dataclass
class PrefillState:
    """What a chunked prefill leaves for decoding: the KV cache, the last position's logits [B, vocab], the
    prompt length."""

    cache: object
    logits: torch.Tensor
    prompt_tokens: int


def new_cache(config):
    """An empty DynamicCache for a model of `config`."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers versions whose DynamicCache takes no config
        return DynamicCache()


def _vision_features(model, pixels: torch.Tensor, grid_thw: torch.Tensor, frames: int | None):
    """(features [tokens, hidden], deepstack list or None): the vision tower over `frames` temporal patches a call."""
    visual = model.model.visual
    pixels = pixels.to(visual.dtype if hasattr(visual, "dtype") else next(visual.parameters()).dtype)
    feats, deep, row = [], [], 0
    for t, h, w in grid_thw.tolist():
        step = t if frames is None else frames
        for t0 in range(0, t, step):
            n_t = min(step, t - t0)
            rows = n_t * h * w
            out = visual(pixels[row:row + rows], grid_thw=torch.tensor([[n_t, h, w]], device=grid_thw.device))
            feats.append(out.pooler_output if hasattr(out, "pooler_output") else out[0])
            stack = getattr(out, "deepstack_features", None)
            if stack:
                deep.append(stack)
            row += rows
    deepstack = [torch.cat([d[i] for d in deep]) for i in range(len(deep[0]))] if deep else None
    return torch.cat(feats), deepstack


def _positions(model, inputs: dict) -> torch.Tensor:
    """The model's MRoPE position ids of the whole prompt (and its rope_deltas stored for decoding)."""
    inner = model.model
    accepted = inspect.signature(inner.get_rope_index).parameters
    kwargs = {k: inputs[k] for k in ("mm_token_type_ids", "video_grid_thw", "image_grid_thw", "attention_mask",
                                     "second_per_grid_ts") if k in accepted and inputs.get(k) is not None}
    position_ids, deltas = inner.get_rope_index(inputs["input_ids"], **kwargs)
    inner.rope_deltas = deltas
    return position_ids


class ChunkedPrefill:
    """chunked_prefill one decoder chunk at a time, each as soon as the video features it needs exist:

        prefill = ChunkedPrefill(model, inputs, ChunkConfig(decoder_tokens=16384))
        while not prefill.done and prefill.needs() <= rows_ready:
            prefill.step(features, deepstack)      # features: the video's rows [0, rows_ready) are final
        state = prefill.state()

    needs() is the number of leading feature rows (in the prompt's video token order) the next chunk reads; rows past
    it may be unwritten. pipelines.stream runs chunks this way while the video still decodes. Construction clears
    model.prism_stats' layer records (the chunks record into them); its tower timings are the caller's."""

    def __init__(self, model, inputs: dict, chunks: ChunkConfig):
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError(f"chunked_prefill takes one prompt (batch 1), got batch {ids.shape[0]}")
        if inputs.get("pixel_values") is not None:
            raise ValueError("chunked_prefill takes video prompts; images (pixel_values) are not supported: run them "
                             "unchunked")
        self.model, self.lm = model, model.model.language_model
        stats = getattr(model, "prism_stats", None)
        if stats is not None:
            stats.layers.clear()
        with torch.no_grad():
            self.embeds = model.get_input_embeddings()(ids)
            self.positions = _positions(model, inputs)
        self.visual_mask = ids == model.config.video_token_id
        vision = getattr(model.config, "vision_config", None)
        self.deepstack = bool(getattr(vision, "deepstack_visual_indexes", None))  # Qwen3-VL
        self.visual_rows = int(self.visual_mask.sum())
        self.cache = new_cache(model.config)
        n = ids.shape[1]
        self.prompt_tokens = n
        self.bounds = [(s, min(n, s + chunks.decoder_tokens)) for s in range(0, n, chunks.decoder_tokens)]
        before = torch.cumsum(self.visual_mask[0].to(torch.int64), 0).tolist()  # visual tokens up to each position
        self.rows = [(before[s - 1] if s else 0, before[e - 1]) for s, e in self.bounds]  # each chunk's feature rows
        self.next, self.hidden = 0, None

    @property
    def done(self) -> bool:
        return self.next == len(self.bounds)

    def needs(self) -> int:
        """The feature rows the next chunk reads: rows [0, needs()) must be final before step()."""
        return self.rows[self.next][1]

    def step(self, features: torch.Tensor | None, deepstack: list | None = None) -> None:
        """Run the next chunk; `features` [>= needs() rows, hidden] (None for a prompt without video tokens),
        `deepstack` Qwen3-VL's per-layer lists of the same rows."""
        (s, e), (first, last) = self.bounds[self.next], self.rows[self.next]
        if last and (features is None or features.shape[0] < last):
            raise ValueError(f"chunk {self.next} reads feature rows up to {last}, got "
                             f"{0 if features is None else features.shape[0]}")
        if last > first and self.deepstack and deepstack is None:
            raise ValueError("this model's decoder takes deepstack features with the video features (Qwen3-VL): pass "
                             "the vision tower's deepstack list")
        embeds, extra = self.embeds[:, s:e], {}
        with torch.no_grad():
            if last > first:
                chunk_mask = self.visual_mask[:, s:e]
                embeds = embeds.masked_scatter(chunk_mask[..., None], features[first:last].to(embeds.dtype))
                if deepstack is not None:  # Qwen3-VL: the deepstack features of the visual tokens inside this chunk
                    extra = {"visual_pos_masks": chunk_mask,
                             "deepstack_visual_embeds": [d[first:last] for d in deepstack]}
            out = self.lm(inputs_embeds=embeds, position_ids=self.positions[..., s:e], past_key_values=self.cache,
                          use_cache=True, **extra)
        self.hidden = out.last_hidden_state[:, -1:]
        self.next += 1

    def state(self) -> PrefillState:
        """The PrefillState once every chunk has run."""
        if not self.done:
            raise RuntimeError(f"{len(self.bounds) - self.next} chunks have not run")
        with torch.no_grad():
            logits = self.model.lm_head(self.hidden)[:, -1]
        self.embeds = None  # the prompt's embeddings are not needed for decoding
        return PrefillState(self.cache, logits, self.prompt_tokens)


def chunked_prefill(model, inputs: dict, chunks: ChunkConfig, features: tuple | None = None) -> PrefillState:
    """Prefill a Qwen-VL model (processor outputs for one video prompt, batch 1) chunk by chunk. `features`: the
    video's vision-tower output (features [video tokens, hidden], deepstack list or None) when it was computed
    already (pipelines.stream); the inputs then need no pixel values. Resets model.prism_stats first."""
    stats = getattr(model, "prism_stats", None)
    if stats is not None:
        stats.reset()
    prefill = ChunkedPrefill(model, inputs, chunks)
    feats, deepstack = None, None
    if features is not None or inputs.get("pixel_values_videos") is not None:
        with torch.no_grad():
            feats, deepstack = features or _vision_features(model, inputs["pixel_values_videos"],
                                                            inputs["video_grid_thw"], chunks.vision_frames)
        if prefill.visual_rows != feats.shape[0]:
            raise ValueError(f"the prompt has {prefill.visual_rows} video tokens but the video gives "
                             f"{feats.shape[0]} features")
    while not prefill.done:
        prefill.step(feats, deepstack)
    return prefill.state()


def greedy_decode(model, state: PrefillState, max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                  on_token=None, logits_processor=None, prompt_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy tokens [1, <= max_new_tokens] after a chunked prefill (dense decoding on the prefill's cache, which
    it extends in place: decode a PrefillState once). on_token(token_id) is called with each token as it is chosen.
    eos_token_id: the token id(s) that end the answer (None: the model's generation_config's).

    logits_processor: transformers logits processors (a LogitsProcessorList) applied before each argmax, as
    transformers' generate(do_sample=False) applies them: to the logits in float32, with input_ids = `prompt_ids`
    [1, prompt tokens] followed by the tokens chosen so far (prompt_ids is needed when the processors read the
    prompt: a repetition penalty, n-gram blocking)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    eos = model.generation_config.eos_token_id if eos_token_id is None else eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    seen = None
    if logits_processor is not None:
        if prompt_ids is None:
            raise ValueError("logits_processor needs prompt_ids (the prompt's token ids, [1, n])")
        seen = prompt_ids.to(state.logits.device)

    def choose(logits):
        nonlocal seen
        if seen is None:
            return logits.argmax(-1, keepdim=True)
        token = logits_processor(seen, logits.float()).argmax(-1, keepdim=True)
        seen = torch.cat([seen, token.to(seen.dtype)], dim=1)
        return token

    token = choose(state.logits)
    out = [token]
    if on_token is not None:
        on_token(int(token))
    with torch.no_grad():
        for _ in range(max_new_tokens - 1):
            if int(token) in eos:
                break
            logits = model(input_ids=token, past_key_values=state.cache, use_cache=True).logits[:, -1]
            token = choose(logits)
            out.append(token)
            if on_token is not None:
                on_token(int(token))
    return torch.cat(out, dim=1)


# generation_config fields that change greedy decoding and that Decoding does not reproduce, with their no-op values
UNSUPPORTED = {"guidance_scale": (None, 1, 1.0), "sequence_bias": (None,), "forced_bos_token_id": (None,),
               "forced_eos_token_id": (None,), "exponential_decay_length_penalty": (None,),
               "remove_invalid_values": (None, False), "watermarking_config": (None,), "stop_strings": (None,),
               "penalty_alpha": (None,), "dola_layers": (None,)}


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding as transformers' generate(do_sample=False, num_beams=1) does it: stop at `eos_token_id` (None:
    the model's generation_config's), `max_new_tokens` at most, the logits processors of the other fields (their
    transformers defaults turn them off)."""

    max_new_tokens: int
    eos_token_id: int | tuple[int, ...] | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_length: int = 0
    min_new_tokens: int = 0
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")

    @classmethod
    def from_generation_config(cls, generation_config, max_new_tokens: int,
                               eos_token_id: int | list[int] | None = None) -> Decoding:
        """The greedy decoding transformers' generate gives with `generation_config` and these overrides; ValueError
        naming the field for one that changes greedy decoding and is not reproduced here (UNSUPPORTED)."""
        bad = [name for name, off in UNSUPPORTED.items() if getattr(generation_config, name, None) not in off]
        if bad:
            raise ValueError(f"the model's generation_config sets {', '.join(bad)}, which transformers applies in "
                             "greedy decoding and prism_mm does not: unset it in generation_config.json")

        def ints(value):
            return None if value is None else tuple(int(v) for v in value)

        eos, bad_words = eos_token_id, getattr(generation_config, "bad_words_ids", None)
        return cls(int(max_new_tokens), tuple(eos) if isinstance(eos, (list, tuple)) else eos,
                   float(getattr(generation_config, "repetition_penalty", None) or 1.0),
                   int(getattr(generation_config, "no_repeat_ngram_size", None) or 0),
                   int(getattr(generation_config, "min_length", None) or 0),
                   int(getattr(generation_config, "min_new_tokens", None) or 0),
                   ints(getattr(generation_config, "suppress_tokens", None)),
                   ints(getattr(generation_config, "begin_suppress_tokens", None)),
                   None if bad_words is None else tuple(tuple(int(t) for t in w) for w in bad_words))

    def eos_ids(self, model) -> list[int]:
        """The token ids that end an answer."""
        eos = self.eos_token_id if self.eos_token_id is not None else model.generation_config.eos_token_id
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]

    def processors(self, model, prompt_tokens: int):
        """transformers' LogitsProcessorList for these settings (in generate's order), or None when none is on."""
        from transformers import generation as g

        eos = torch.tensor(self.eos_ids(model), device=model.device)
        procs = []
        if self.repetition_penalty != 1.0:
            procs.append(g.RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            procs.append(g.NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        if self.bad_words_ids is not None:
            procs.append(g.NoBadWordsLogitsProcessor([list(w) for w in self.bad_words_ids], eos))
        if self.min_length > 0:
            procs.append(g.MinLengthLogitsProcessor(self.min_length, eos, device=model.device))
        if self.min_new_tokens > 0:
            procs.append(g.MinNewTokensLengthLogitsProcessor(prompt_tokens, self.min_new_tokens, eos,
                                                             device=model.device))
        if self.suppress_tokens is not None:
            procs.append(g.SuppressTokensLogitsProcessor(list(self.suppress_tokens), device=model.device))
        if self.begin_suppress_tokens is not None:
            procs.append(g.SuppressTokensAtBeginLogitsProcessor(list(self.begin_suppress_tokens), prompt_tokens,
                                                                device=model.device))
        return g.LogitsProcessorList(procs) if procs else None

    @property
    def reads_prompt(self) -> bool:
        """Whether a logits processor is on: they read the prompt's token ids (greedy_decode's prompt_ids)."""
        return (self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.bad_words_ids is not None
                or self.min_length > 0 or self.min_new_tokens > 0 or self.suppress_tokens is not None
                or self.begin_suppress_tokens is not None)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
