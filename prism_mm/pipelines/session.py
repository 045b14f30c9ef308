"""A loaded model, a video's prefix, questions: the flow under every front end (the CLI, the lmms-eval model,
notebooks, the chat page).

    session = VideoSession("tiny-qwen2.5-vl", PrismConfig.video())
    video = session.load_video("clip.mp4", VideoOptions(max_frames=16))  # the prefix: decode, tower, decoder prefill
    first = video.ask("What happens?", max_new_tokens=32)               # a RunRecord; first.reused is False
    again = video.ask("What colour is it?")                              # from the same prefix: again.reused
    chat = video.chat(); chat.ask("What happens?"); chat.ask("And then?")  # a conversation after one prefix

A prefix is built once per (model, attention setting, file identity, sampling options) and kept in the session's
PrefixStore; see pipelines.prefix for why an answer from it is exact.
"""
from __future__ import annotations

import threading
import time

import torch
from tqdm import tqdm

from ..attention import PrismLayer, compile_lengths
from ..config import PrismConfig
from ..models import (ATTENTIONS, VISION_ATTENTIONS, VL_MODEL_TYPES, VL_PATCH_SIZES, enable_prism, load_model,
                      set_attention, synchronize_gpus)
from ..spectral import text_config
from ..tiny_models import TINY_MODELS, build_tiny_processor
from .frames import start_decoder_server
from .prefill import ChunkConfig, Decoding, chunked_prefill
from .prefix import (Answer, PrefixBuild, PrefixInfo, PrefixKey, PrefixStore, VideoPrefix, ask, cache_layers,
                     text_after_video)
from .record import RunRecord
from .stream import BATCH_PAIRS, StreamingUnavailable, stream_prefill, stream_video
from .video import VideoOptions, build_inputs, probe, prompt_inputs, video_messages

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def check_device(device: str | None) -> str:
    """The torch device string to run on ("cuda" when available and none is given); ValueError naming the fix for
    a device this machine does not have. Checked before any model is loaded."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one prism_mm runs on; use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine has no CUDA GPU visible to torch; use cpu "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return device


def load_video_model(model: str, prism: PrismConfig, device: str, dtype: str = "auto", random_weights: bool = False,
                     device_map=None, vision: str = "varlen"):
    """(model, processor) for video QA (the model name resolved as load_model resolves it), Prism set up on the text
    decoder (its attention is then switched with prism_mm.models.set_attention), a stand-in processor for
    random-weight architectures."""
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    vl_model, processor = load_model(model, attn="dense", dtype=dtype, device_map=device_map or device,
                                     random_weights=random_weights)
    if vl_model.config.model_type not in VL_MODEL_TYPES:
        raise ValueError(f"{model!r} is a {vl_model.config.model_type} model; video QA needs Qwen2-VL, "
                         "Qwen2.5-VL or Qwen3-VL")
    if processor is None:
        # Shipped configs carry no tokenizer: a character-level stand-in builds the prompt.
        processor = build_tiny_processor(vl_model.config.model_type, real_vocab=True)
    enable_prism(vl_model, prism, vision=vision)
    return vl_model, processor


# The decoder chunks a streamed Prism prefix is pipelined in behind the decoding when the session has no ChunkConfig
# of its own (first token sooner than one pass after the stream; docs/benchmarks.md).
STREAM_CHUNKS = ChunkConfig(decoder_tokens=8192)
# What the session keeps of prefixes on its device by default (a 300 s 720p clip for Qwen2.5-VL-7B: 5.84 GiB).
PREFIX_DEVICE_BYTES = 24 << 30
# The stand-in video a CUDA session warms up on (VideoSession.warm_up): frame pairs and frame side in pixels; and the
# longest prompt whose Prism launch variants it compiles (from random q, k, v, not a forward of that length).
WARMUP_PAIRS, WARMUP_SIDE, WARMUP_TOKENS = 48, 448, 131072


def stream_chunks_of(tokens: int) -> ChunkConfig | None:
    """A streamed run's decoder chunks of `tokens` tokens (the CLI's and the lmms-eval model's stream_chunk_tokens);
    0: None (one pass after the stream); ValueError below 0."""
    if tokens < 0:
        raise ValueError(f"stream_chunk_tokens must be >= 0 (0: one pass), got {tokens}")
    return ChunkConfig(tokens) if tokens else None


class VideoSession:
    """A loaded Qwen-VL model with Prism set up, its processor, and the prefixes of the videos asked about.

    model: hub id, local directory, or a tiny model name (tiny-qwen2.5-vl, ...); random_weights builds a shipped
    architecture with random weights (speed runs). attn is the attention it starts with ("prism" | "dense").
    chunks: prefill in decoder / vision-tower chunks (bounded memory for very long videos); None: one pass, or, streamed
    in Prism mode, `stream_chunks` (each decoder chunk runs as soon as the features of its video tokens exist; None: one
    pass once the stream has ended). stream: decode the video while the vision tower runs where the file allows
    (False: decoding, processor and prefill in a row). prefixes: the PrefixStore (default: PREFIX_DEVICE_BYTES on the
    device, nothing offloaded).
    """

    def __init__(self, model: str = DEFAULT_MODEL, prism: PrismConfig | None = None, device: str | None = None,
                 dtype: str = "auto", random_weights: bool = False, device_map=None, attn: str = "prism",
                 progress: bool = False, vision: str = "varlen", chunks: ChunkConfig | None = None,
                 stream_chunks: ChunkConfig | None = STREAM_CHUNKS, stream: bool = True,
                 prefixes: PrefixStore | None = None):
        if vision not in VISION_ATTENTIONS:
            raise ValueError(f"vision must be one of {VISION_ATTENTIONS}, got {vision!r}")
        self.chunks, self.stream_chunks, self.stream = chunks, stream_chunks, stream
        self.model_name, self.vision = model, vision
        self.device = check_device(device)
        self.prism_config = prism or PrismConfig.video()
        self.progress = progress
        self.prefixes = prefixes if prefixes is not None else PrefixStore(PREFIX_DEVICE_BYTES)
        self._lock = threading.RLock()  # one prefill or answer on the model at a time (background prefix builds)
        # the pipelined stream's decoder processes fork from it: it boots while the model loads
        if chunks is not None or (stream and stream_chunks is not None and attn != "dense"):
            start_decoder_server()
        self.model, self.processor = load_video_model(model, self.prism_config, self.device, dtype, random_weights,
                                                      device_map, vision)
        # a store shared by sessions never serves another loaded model's prefix (random weights differ per load)
        self.model_id = f"{model}|{self.model.dtype}|{self.device}|{id(self.model)}"
        self.attn = None
        self.set_attention(attn)
        self.warmup_s: float | None = None

    @property
    def random_weights(self) -> bool:
        """True when the answers are meaningless (a tiny model or random weights)."""
        return bool(getattr(self.model, "prism_random_weights", False)) or self.model_name in TINY_MODELS

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.startswith("cuda") else "cpu"

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def set_attention(self, attn: str) -> None:
        """"prism": Prism on the text decoder and the session's vision attention (`vision`, default the batched
        varlen entry); "dense": transformers' SDPA in the tower and the decoder (with vision="varlen" the tower's
        MLP widths stay zero-padded, see prism_mm.vision.align_mlp_widths, and the fused RMSNorm modules stay: the
        comparison isolates attention). ValueError for anything else."""
        if attn != self.attn:
            with self._lock:
                set_attention(self.model, attn, self.vision if attn == "prism" else "sdpa")
                self.attn = attn

    def decoder_chunks(self) -> ChunkConfig | None:
        """The decoder chunks a prefix is built in: the session's `chunks`, else, streamed in Prism mode, stream_chunks;
        None: one pass. Dense SDPA takes a chunk's [chunk, prompt] mask on its slower masked kernel, so dense streams
        in one pass (Qwen3-VL-8B, 300 s clip, H200: 23.56 s pipelined against 15.98 s; docs/benchmarks.md)."""
        if self.chunks is not None:
            return self.chunks
        return self.stream_chunks if self.stream and self.attn == "prism" else None

    def attention_key(self) -> tuple:
        """What of the session's attention setting a prefix depends on."""
        if self.attn == "dense":
            return ("dense",)
        chunks = self.decoder_chunks()
        return ("prism", self.prism_config, self.vision, chunks and (chunks.decoder_tokens, chunks.vision_frames))

    def prefix_key(self, path: str, options: VideoOptions) -> PrefixKey:
        return PrefixKey.of(self.model_id, self.attention_key(), path, options)

    def load_video(self, path: str, options: VideoOptions | None = None, background: bool = False,
                   check_against_dense: bool = False, attn: str | None = None) -> "Video":
        """A Video handle whose prefix, in attention `attn` (None: the session's current one), is built now, or in a
        background thread with background=True (a user picks a video, then types: ask() waits for it). A prefix kept
        for the same key is reused. VideoError for a missing or unreadable file, before any work. check_against_dense
        (a Prism prefix built in one decoder chunk): one more untimed prefill in which every sparse layer also runs
        dense attention, reported as the first record's layers_vs_dense."""
        if attn is not None and attn not in ATTENTIONS:
            raise ValueError(f"attn must be one of {ATTENTIONS}, got {attn!r}")
        options = options or VideoOptions()
        probe(path)  # a bad file fails here, in the caller's thread
        video = Video(self, path, options, attn or self.attn)
        if background:
            video._start(check_against_dense)
        else:
            video._prefix(check_against_dense)
        return video

    def prefix(self, path: str, options: VideoOptions, check_against_dense: bool = False) -> tuple[VideoPrefix, bool]:
        """(the prefix of `path` in the current attention, whether it was built by this call)."""
        with self._lock:
            key = self.prefix_key(path, options)
            kept = self.prefixes.get(key, self.device)
            if kept is not None:
                return kept, False
            prefix = self._build(path, options, key, check_against_dense)
            self.prefixes.put(prefix)
            return prefix, True

    def _build(self, path: str, options: VideoOptions, key: PrefixKey, check: bool) -> VideoPrefix:
        """Decode, processor, vision tower and the decoder prefill of the prompt up to the end of the video: streamed
        (the tower runs while the file decodes, Prism's decoder chunks as their features land) where the file allows,
        else in a row."""
        stats, chunks = self.model.prism_stats, self.decoder_chunks()
        stats.reset()
        if self.cuda:
            synchronize_gpus()
        started = time.perf_counter()
        on = self.device if self.cuda else None
        pairs = (chunks.vision_frames if chunks is not None else None) or BATCH_PAIRS
        pipeline = features = None
        streamed = self.stream
        with tqdm(total=1, desc=f"video prefix ({self.attn})", disable=not self.progress, leave=False) as bar:
            if streamed:
                try:
                    if chunks is None:
                        features, prepared = stream_video(self.model, self.processor, path, None, options, on, pairs)
                    else:  # the decoder's chunks run as their features land
                        pipeline, features, prepared = stream_prefill(self.model, self.processor, path, None, options,
                                                                      chunks, on, pairs)
                except StreamingUnavailable:  # raised before any work: in a row
                    streamed = False
            if not streamed:
                prepared = build_inputs(self.processor, self.model.config, path, None, options, device=on,
                                        resize_device=on)
            if self.cuda:
                synchronize_gpus()
            video_s = time.perf_counter() - started
            vision_s = stats.vision_seconds if streamed else None
            t0 = time.perf_counter()
            inputs = self._on_device(prepared.inputs)
            if pipeline is not None:
                overlapped = (pipeline.next, len(pipeline.bounds))  # the chunks that ran inside the stream
                while not pipeline.done:
                    pipeline.step(*features)
                cache = pipeline.cache
            else:
                whole = chunks or ChunkConfig(prepared.total_tokens)
                cache = chunked_prefill(self.model, inputs, whole, features).cache
                overlapped = (0, -(-prepared.total_tokens // whole.decoder_tokens))
            if self.cuda:
                synchronize_gpus()
            prefill_s = time.perf_counter() - t0
            if not streamed:
                vision_s = stats.vision_seconds
            bar.update(1)
        prism = self.attn == "prism"
        summary = stats.summary()
        build = PrefixBuild(video_s, prefill_s, vision_s, streamed, *overlapped,
                            stats.mean_density if prism else 1.0, stats.sparse_layers if prism else 0,
                            summary["layers"], summary["dense_reasons"] if prism else [],
                            stats.layer_report() if prism else [])
        rope_deltas = self.model.model.rope_deltas
        layers = cache_layers(cache)
        del cache, pipeline
        if check and prism and build.decoder_chunks == 1:  # in chunks, a one-pass check would not be its selections
            build.layers_vs_dense = self._checked_prefill(inputs, features)
        return VideoPrefix(key, layers, prepared.total_tokens, rope_deltas, prepared.frames_used, prepared.frame_size,
                           prepared.visual_tokens, prepared.info.duration, build, prepared.inputs["input_ids"].cpu())

    def answer(self, prefix: VideoPrefix, built: bool, ids: list[int], decoding: Decoding | int, cache=None,
               fed: int = 0, on_token=None) -> tuple[RunRecord, Answer]:
        """(RunRecord, Answer: the tokens, first logits and the conversation's cache) of an answer from `prefix` to
        the text tokens `ids` after the video (pipelines.prefix.ask; decoding: a Decoding, or max_new_tokens for
        plain greedy decoding); `built`: the prefix was built for this answer (its build time is the record's)."""
        decoding = decoding if isinstance(decoding, Decoding) else Decoding(decoding)
        with self._lock:
            self.prefixes.restore(prefix, self.device)  # evicted since it was handed out (a background build)
            if prefix.key is not None:  # the mode it was built in (another thread may have switched since)
                self.set_attention(prefix.key.attention[0])
            self.model.prism_stats.reset()
            result = ask(self.model, prefix, ids, decoding, cache, fed, on_token)
        b = prefix.build
        answer = self.processor.batch_decode(result.tokens, skip_special_tokens=True,
                                             clean_up_tokenization_spaces=False)[0].strip()
        record = RunRecord(self.attn, answer, b.prefill_s if built else 0.0, b.vision_s if built else None,
                           result.decode_s, int(result.tokens.numel()), b.mean_density, b.sparse_layers, b.layers,
                           b.dense_reasons, b.layer_report, prefix.frames, prefix.frame_size, prefix.visual_tokens,
                           prefix.tokens + fed + len(ids), b.video_s if built else 0.0, b.streamed,
                           b.decoder_chunks_streamed if built else 0, b.decoder_chunks, not built, result.question_s,
                           len(ids), prefix.tokens)
        return record, result

    def warm_up(self, max_tokens: int = WARMUP_TOKENS) -> float:
        """Pay the one-time costs (Triton compiles, allocator growth) once, on stand-ins: Prism's launch variants for
        every decoder chunk of a prompt of up to `max_tokens` (random q, k, v at those lengths; compile_lengths), then
        a black WARMUP_PAIRS-pair video of WARMUP_SIDE-pixel frames prefilled as the session's prefixes are, questions
        of three lengths and their first decoding steps, in each attention mode. Returns the seconds it took (reported
        beside the timings it keeps clean). Changes no state a later answer depends on."""
        model_type = self.model.config.model_type
        side = WARMUP_SIDE // (2 * VL_PATCH_SIZES[model_type]) * 2 * VL_PATCH_SIZES[model_type]
        frames = torch.zeros((2 * WARMUP_PAIRS, 3, side, side), dtype=torch.uint8)
        meta = {"fps": 2.0, "frames_indices": list(range(2 * WARMUP_PAIRS)), "total_num_frames": 2 * WARMUP_PAIRS}
        inputs = prompt_inputs(self.processor, frames, meta, "warm-up", None, self.device if self.cuda else None)
        questions = [text_after_video(self.processor, video_messages("warm-up", "What happens?" + "." * n))
                     for n in range(3)]  # lengths of three residues: the kernels specialise on lengths mod 16
        started, previous = time.perf_counter(), self.attn
        with self._lock:
            try:
                for attn in ATTENTIONS:
                    self.set_attention(attn)
                    if attn == "prism":
                        self._compile_prism(max_tokens)
                    chunks = self.decoder_chunks() or ChunkConfig(int(inputs["input_ids"].shape[1]))
                    cache = chunked_prefill(self.model, self._on_device(inputs), chunks).cache
                    prefix = VideoPrefix(None, cache_layers(cache), int(inputs["input_ids"].shape[1]),
                                         self.model.model.rope_deltas, 0, (side, side), 0, 0.0, None)
                    del cache
                    for ids in questions:
                        ask(self.model, prefix, ids, Decoding(2))
            finally:
                self.set_attention(previous)
                self.model.prism_stats.reset()
        if self.cuda:
            synchronize_gpus()
        self.warmup_s = time.perf_counter() - started
        return self.warmup_s

    def _compile_prism(self, max_tokens: int) -> None:
        """compile_lengths for each distinct Prism layer setting, at the chunk shapes of the session's prefixes up to
        `max_tokens`: full chunks and a ragged last one at every length (chunked), or whole prompts in each
        power-of-two bracket of lengths (one pass)."""
        chunks = self.decoder_chunks()
        if chunks is not None:
            c = chunks.decoder_tokens
            shapes = [shape for end in range(c, max_tokens + 1, c) for shape in ((c, end), (c // 3 + 1, end + c // 3 + 1))]
        else:
            shapes = [(m, m) for n in (1 << b for b in range(12, max_tokens.bit_length())) if n <= max_tokens
                      for m in (n, n + 13)]  # lengths divisible by 16 and not
        cfg = text_config(self.model.config)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        seen = set()
        for module in self.model.modules():
            layer = getattr(module, "prism", None)
            if isinstance(layer, PrismLayer) and (layer.config, layer.bands, layer.backend) not in seen:
                seen.add((layer.config, layer.bands, layer.backend))
                compile_lengths(layer, cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, self.model.dtype,
                                self.model.device, shapes)

    def _checked_prefill(self, inputs: dict, features: tuple | None = None) -> list[dict]:
        """One untimed Prism prefill of `inputs` (with `features`: the tower's, streamed) in which every sparse layer
        also runs dense attention: PrismRunStats.layer_report() with each layer's kept blocks and error against dense."""
        stats = self.model.prism_stats
        stats.reset()
        stats.check_against_dense = True
        try:
            with torch.no_grad():
                chunked_prefill(self.model, inputs, ChunkConfig(int(inputs["input_ids"].shape[1])), features)
            return stats.layer_report()
        finally:
            stats.check_against_dense = False

    def _on_device(self, inputs: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


class Video:
    """A video loaded into a session: questions about it are answered from its prefix (built once per attention
    mode; the session's PrefixStore keeps it)."""

    def __init__(self, session: VideoSession, path: str, options: VideoOptions, attn: str):
        self.session, self.path, self.options, self.attn = session, path, options, attn
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._built_for_first = False  # the prefix was built by load_video: the first answer's record carries its time
        self.prefix_info: PrefixInfo | None = None  # what the prefix of the last answer (or of load_video) is

    def _prefix(self, check: bool = False) -> tuple[VideoPrefix, bool]:
        """(the prefix, built by this call), after the background build if one runs (its error is raised here)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                error, self._error = self._error, None
                raise error
        return self._get(check)

    def _get(self, check: bool) -> tuple[VideoPrefix, bool]:
        with self.session._lock:
            self.session.set_attention(self.attn)
            prefix, built = self.session.prefix(self.path, self.options, check)
        if built:
            self._built_for_first = True
        self.prefix_info = prefix.info
        return prefix, built

    def _start(self, check: bool) -> None:
        def build():
            try:
                self._get(check)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread by the next ask
                self._error = e

        self._thread = threading.Thread(target=build, name="prism_mm-prefix", daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        """True once the prefix has been built (or failed: ask() then raises the error)."""
        return self._thread is None or not self._thread.is_alive()

    def wait(self) -> VideoPrefix:
        """Wait for the prefix (built again if it was evicted since)."""
        return self._prefix()[0]

    def _take_build(self, built: bool) -> bool:
        """Whether this answer carries the prefix's build time: built for it, or by load_video before the first ask."""
        carried = built or self._built_for_first
        self._built_for_first = False
        return carried

    def ask(self, question: str, max_new_tokens: int = 128, on_token=None) -> RunRecord:
        """The answer to `question` from the video's prefix (built now if it is not kept), as a RunRecord (reused:
        False for the answer that paid for the prefix). on_token(token_id) streams the answer's tokens."""
        ids = text_after_video(self.session.processor, video_messages(self.path, question))
        return self.answer(ids, Decoding(max_new_tokens), on_token)[0]

    def answer(self, ids: list[int], decoding: Decoding, on_token=None) -> tuple[RunRecord, Answer]:
        """ask() for the text token ids after the video (pipelines.prefix.text_after_video) and a Decoding: the
        RunRecord and the Answer (its tokens)."""
        prefix, built = self._prefix()
        return self.session.answer(prefix, self._take_build(built), ids, decoding, on_token=on_token)

    def chat(self) -> "Chat":
        return Chat(self)


class Chat:
    """A conversation about one video: each turn's question and answer stay in the cache after the prefix, and the
    next turn prefills only the tokens the template adds after them (as one dense chunk).

    The template renders the earlier answers from their text; where that tokenizes differently from the tokens the
    model generated (whitespace stripped, say), the cache goes back to the prefix and the whole conversation after the
    video is prefilled again, so a turn always equals a fresh run over the conversation as the template writes it."""

    def __init__(self, video: Video):
        self.video = video
        self.messages: list[dict] = []
        self._cache = None
        self._fed: list[int] = []  # the token ids after the prefix that the cache holds
        self._prefix_key = None

    def ask(self, question: str, max_new_tokens: int = 128, on_token=None) -> RunRecord:
        session = self.video.session
        prefix, built = self.video._prefix()
        content = [{"type": "text", "text": question}]
        if not self.messages:
            content.insert(0, {"type": "video", "video": self.video.path})
        messages = self.messages + [{"role": "user", "content": content}]
        ids = text_after_video(session.processor, messages)
        same = 0
        if self._prefix_key == prefix.key:
            while same < min(len(ids), len(self._fed)) and ids[same] == self._fed[same]:
                same += 1
        if self._cache is None or same < len(self._fed) or same == len(ids):  # diverged (or nothing new): start over
            self._cache, self._fed, same = None, [], 0
        cache, self._cache = self._cache, None  # a turn that fails leaves no half-extended cache for the next
        record, result = session.answer(prefix, self.video._take_build(built), ids[same:], max_new_tokens, cache, same,
                                        on_token)
        self._cache, self._prefix_key = result.cache, prefix.key
        self._fed = ids + result.tokens[0, :-1].tolist()  # the last generated token is not fed yet
        self.messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": record.answer}]}]
        return record

    def reset(self) -> None:
        """A new conversation about the same video (its prefix stays)."""
        self.messages, self._cache, self._fed, self._prefix_key = [], None, [], None
