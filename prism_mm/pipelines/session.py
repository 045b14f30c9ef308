"""One video-QA session under every front end (the CLI, the lmms-eval model, notebooks).

A VideoSession loads a Qwen-VL model with Prism set up on its text decoder, switches its attention
between "prism" and "dense", prepares a video + question, and runs one timed greedy generation into a
RunRecord: the answer, prefill / decode seconds and what Prism did.

    session = VideoSession("tiny-qwen2.5-vl", PrismConfig.video())
    prepared = session.prepare("clip.mp4", "What happens?", VideoOptions(max_frames=16))
    record = session.run(prepared, "prism", max_new_tokens=32)

VideoQA is the one-call form the CLI (python -m prism_mm.pipelines.video_qa) and the notebooks use:
VideoQA(model, attn="compare")(video, question) -> a result dict, which format_report() prints.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from ..config import PrismConfig
from ..models import (
    VISION_ATTENTIONS,
    VL_MODEL_TYPES,
    enable_prism,
    load_model,
    set_attention,
    synchronize_gpus,
)
from ..testing.tiny import TINY_MODELS, build_tiny_processor, tiny_model_dir
from .frames import start_decoder_server
from .prefill import ChunkConfig, chunked_prefill, greedy_decode
from .stream import BATCH_PAIRS, StreamingUnavailable, stream_prefill, stream_video
from .video import PreparedVideo, VideoOptions, build_inputs, probe

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# shared by a comparison's unstreamed runs
VIDEO_FIELDS = ("frames", "frame_size", "visual_tokens", "total_tokens", "video_s")


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


def resolve_model(name: str) -> str:
    """Tiny model names (testing.tiny.TINY_MODELS) -> a local directory, built on first use; anything else unchanged."""
    return str(tiny_model_dir(name)) if name in TINY_MODELS else name


@dataclass
class RunRecord:
    """One timed generation. mean_density is 1.0 and sparse_layers 0 for dense attention; the video
    fields are set when the run was given a PreparedVideo."""

    attn: str
    answer: str
    prefill_s: float  # the prefill forward (vision tower + decoder), as model.prism_stats timed it; streamed: the decoder's
    # (with decoder chunks: those left when the last video features landed)
    vision_s: float | None  # of which the vision tower (None without visual input); streamed: its share of video_s
    decode_s: float  # the rest of generate()
    new_tokens: int
    mean_density: float | None
    sparse_layers: int
    layers: int = 0  # decoder layers that recorded what they did
    dense_reasons: list[str] = field(default_factory=list)  # why Prism layers ran dense
    layer_report: list[dict] = field(default_factory=list)  # PrismRunStats.layer_report() of a prism run
    frames: int | None = None
    frame_size: tuple[int, int] | None = None  # (width, height) of the sampled frames after resizing
    visual_tokens: int | None = None
    total_tokens: int | None = None
    video_s: float | None = None  # decoding + sampling + processor of the PreparedVideo it ran on
    streamed: bool = False  # video_s also holds the vision tower, run while the file decoded (vision_s: its share)
    # streamed with decoder chunks (a session's ChunkConfig): how many of them ran inside video_s, as their video
    # features landed, and how many there were (the rest are prefill_s)
    decoder_chunks_streamed: int = 0
    decoder_chunks: int = 1
    layers_vs_dense: list[dict] = field(default_factory=list)  # a streamed run's check against dense (not in to_dict)

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def first_token_s(self) -> float:
        """From the video file (when run on a PreparedVideo or streamed) to the first answer token."""
        return (self.video_s or 0.0) + self.prefill_s

    def set_video(self, prepared: PreparedVideo) -> None:
        """The video fields of the PreparedVideo the run was given (or streamed)."""
        self.frames, self.frame_size = prepared.frames_used, prepared.frame_size
        self.visual_tokens, self.total_tokens = prepared.visual_tokens, prepared.total_tokens
        self.video_s = prepared.seconds

    def to_dict(self, video: bool = True) -> dict:
        """The record as a JSON-ready dict; video=False leaves out the video fields (shared by a comparison's runs)."""
        d = asdict(self)
        del d["layers_vs_dense"]  # reported beside the runs (VideoQA's "layers_vs_dense")
        return d if video else {k: v for k, v in d.items() if k not in VIDEO_FIELDS}


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


def load_video_model(model: str, prism: PrismConfig, device: str, dtype: str = "auto", random_weights: bool = False,
                     device_map=None, vision: str = "varlen"):
    """(model, processor) for video QA: tiny names resolved, Prism set up on the text decoder (its
    attention is then switched with prism_mm.models.set_attention), a stand-in processor for
    random-weight architectures."""
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    vl_model, processor = load_model(resolve_model(model), attn="dense", dtype=dtype, device_map=device_map or device,
                                     random_weights=random_weights)
    if vl_model.config.model_type not in VL_MODEL_TYPES:
        raise ValueError(f"{model!r} is a {vl_model.config.model_type} model; video QA needs Qwen2-VL, "
                         "Qwen2.5-VL or Qwen3-VL")
    if processor is None:
        # Shipped configs carry no tokenizer: a character-level stand-in builds the prompt.
        processor = build_tiny_processor(vl_model.config.model_type, real_vocab=True)
    enable_prism(vl_model, prism, vision=vision)
    return vl_model, processor


# The decoder chunks a streamed run pipelines behind the decoding when the session has no ChunkConfig of its own:
# 300 s 720p clip, Qwen2.5-VL-7B, H200 host: first token 11.67 s against 13.19-13.56 s with one decoder pass after the
# stream (lab/logs/first_token_decoders-h200.md); chunk-by-chunk Prism selections measured no less accurate than one
# pass on real weights (lab/logs/chunked_fidelity-cpu.md).
STREAM_CHUNKS = ChunkConfig(decoder_tokens=8192)


def same_decoder_work(a: RunRecord, b: RunRecord) -> bool:
    """True if the two runs' prefill_s time the same decoder work: the same number of decoder chunks, none of them run
    inside the stream (a pipelined run's prefill_s is only what was left after the stream)."""
    return a.decoder_chunks == b.decoder_chunks and a.decoder_chunks_streamed == b.decoder_chunks_streamed == 0


def stream_chunks_of(tokens: int) -> ChunkConfig | None:
    """A streamed run's decoder chunks of `tokens` tokens (the CLI's and the lmms-eval model's stream_chunk_tokens);
    0: None (one pass after the stream); ValueError below 0."""
    if tokens < 0:
        raise ValueError(f"stream_chunk_tokens must be >= 0 (0: one pass), got {tokens}")
    return ChunkConfig(tokens) if tokens else None


class VideoSession:
    """A loaded Qwen-VL model with Prism set up, its processor, and timed runs.

    model: hub id, local directory, or a tiny model name (tiny-qwen2.5-vl, ...); random_weights builds
    a shipped architecture with random weights (speed runs). attn is the attention it starts with.
    """

    def __init__(self, model: str = DEFAULT_MODEL, prism: PrismConfig | None = None, device: str | None = None,
                 dtype: str = "auto", random_weights: bool = False, device_map=None, attn: str = "prism",
                 progress: bool = False, vision: str = "varlen", chunks: ChunkConfig | None = None,
                 stream_chunks: ChunkConfig | None = STREAM_CHUNKS):
        """chunks: prefill in decoder / vision-tower chunks (bounded memory for very long videos); None: one pass.
        stream_chunks: where `chunks` is None, the decoder chunks of a streamed Prism run, each run as soon as the
        features of its video tokens exist (None: one decoder pass once the stream has ended); dense runs stream with
        one decoder pass (see streamed_chunks)."""
        self.chunks, self.stream_chunks = chunks, stream_chunks
        if vision not in VISION_ATTENTIONS:
            raise ValueError(f"vision must be one of {VISION_ATTENTIONS}, got {vision!r}")
        self.model_name, self.vision = model, vision
        self.device = check_device(device)
        self.prism_config = prism or PrismConfig.video()
        self.progress = progress
        # the pipelined stream's decoder processes fork from it: it boots while the model loads (a dense session only
        # pipelines with `chunks`; switched to Prism later, its first pipelined read starts the server itself)
        if chunks is not None or (stream_chunks is not None and attn != "dense"):
            start_decoder_server()
        self.model, self.processor = load_video_model(model, self.prism_config, self.device, dtype, random_weights,
                                                      device_map, vision)
        self.attn = None
        self.set_attention(attn)

    @property
    def random_weights(self) -> bool:
        """True when the answers are meaningless (a tiny model or random weights)."""
        return bool(getattr(self.model, "prism_random_weights", False)) or self.model_name in TINY_MODELS

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.startswith("cuda") else "cpu"

    def set_attention(self, attn: str) -> None:
        """"prism": Prism on the text decoder and the session's vision attention (`vision`, default the batched
        varlen entry); "dense": transformers' SDPA in the tower and the decoder (with vision="varlen" the tower's
        MLP widths stay zero-padded, see prism_mm.vision.align_mlp_widths, and the fused RMSNorm modules stay: the
        comparison isolates attention). ValueError for anything else."""
        if attn != self.attn:
            set_attention(self.model, attn, self.vision if attn == "prism" else "sdpa")
            self.attn = attn

    def prepare(self, video: str, question: str, options: VideoOptions | None = None) -> PreparedVideo:
        """Decode and sample the video, build the chat prompt and the processor tensors (on the session's GPU when
        it has one, the frames are resized there and the processor normalises and patchifies them there)."""
        t0 = time.perf_counter()
        cuda = self.device.startswith("cuda")
        with tqdm(total=1, desc="decoding video", disable=not self.progress, leave=False) as bar:
            on_gpu = self.device if cuda else None
            prepared = build_inputs(self.processor, self.model.config, video, question, options or VideoOptions(),
                                    device=on_gpu, resize_device=on_gpu)
            if cuda:
                torch.cuda.synchronize(self.device)  # the processor's GPU work belongs to this stage's time
            bar.update(1)
        prepared.seconds = time.perf_counter() - t0
        return prepared

    def run(self, prepared_or_inputs: PreparedVideo | dict, attn: str | None = None, max_new_tokens: int = 128,
            warmup: bool = False) -> RunRecord:
        """Greedy generation with `attn` ("prism" | "dense"; None: the current one), timed into a RunRecord.

        warmup=True first generates one token untimed (kernel compiles and allocations stay out of the timing).
        """
        prepared = prepared_or_inputs if isinstance(prepared_or_inputs, PreparedVideo) else None
        inputs = self._on_device(prepared.inputs if prepared is not None else prepared_or_inputs)
        if attn is not None:
            self.set_attention(attn)
        if warmup:
            self._generate(inputs, 1)
        record = self._generate(inputs, max_new_tokens)
        if prepared is not None:
            record.set_video(prepared)
        return record

    def streamed_chunks(self) -> ChunkConfig | None:
        """The decoder chunks a streamed run takes where the session has no `chunks`: stream_chunks in Prism mode; None
        (one decoder pass after the stream) in dense mode, whose SDPA takes a chunk's [chunk, prompt] mask on its
        slower masked kernel: pipelined, Qwen3-VL-8B's dense first token took 23.56 s against 15.98 s in one pass
        (300 s clip, H200; Prism: 13.71 s pipelined against 15.37 s;
        lab/logs/first_token_probe-h200-300s-qwen3-pipelined.jsonl)."""
        return self.stream_chunks if self.attn == "prism" else None

    def run_streamed(self, video: str, question: str, options: VideoOptions | None = None, attn: str | None = None,
                     max_new_tokens: int = 128, warmup: bool = False,
                     check_against_dense: bool = False) -> RunRecord:
        """The video decoded while the vision tower runs (pipelines.stream), then the decoder prefill (in the
        session's decoder chunks, else one) and greedy decoding, timed into a RunRecord whose video_s is the streamed
        stage (decoding, processor and vision tower) and prefill_s the decoder prefill.

        warmup=True first runs it once untimed with one new token on black stand-in frames of the video's sampled
        count and size (the file is decoded once). check_against_dense=True (a Prism run): afterwards, one untimed
        prefill over the same features in which every sparse layer also runs dense attention; the record's
        layers_vs_dense holds that report (as check_against_dense's); a run in more than one decoder chunk is not
        checked (its selections are per chunk)."""
        if attn is not None:
            self.set_attention(attn)
        options = options or VideoOptions()
        if warmup:
            self._streamed(video, question, options, 1, stand_in=True)
        check = check_against_dense and self.attn == "prism"
        record, features, prepared = self._streamed(video, question, options, max_new_tokens, keep_features=check)
        if check and record.decoder_chunks == 1:  # in chunks, the one-pass check would not be the run's selections
            record.layers_vs_dense = self._checked_prefill(prepared.inputs, features)
        return record

    def run_video(self, video: str, question: str, options: VideoOptions | None = None, attn: str | None = None,
                  max_new_tokens: int = 128, warmup: bool = False, stream: bool = True) -> RunRecord:
        """One question about one video file: run_streamed where the video can be streamed (stream=True), else
        prepare + run (record.streamed says which)."""
        if stream:
            try:
                return self.run_streamed(video, question, options, attn, max_new_tokens, warmup)
            except StreamingUnavailable:
                pass
        return self.run(self.prepare(video, question, options), attn, max_new_tokens, warmup)

    def _streamed(self, video: str, question: str, options: VideoOptions, max_new_tokens: int,
                  stand_in: bool = False, keep_features: bool = False) -> tuple[RunRecord, tuple | None, PreparedVideo]:
        """One streamed run, the decoder pipelined in the session's chunks, else its streamed_chunks() (None: one pass
        after the stream); the tower's calls take their vision_frames pairs (else stream.BATCH_PAIRS); the features
        come back with keep_features (else None: not held through decoding)."""
        chunks = self.chunks or self.streamed_chunks()
        cuda = self.device.startswith("cuda")
        stats = self.model.prism_stats
        stats.reset()
        if cuda:
            synchronize_gpus()
        started = time.perf_counter()
        with tqdm(total=1, desc=f"streaming video ({self.attn})", disable=not self.progress or stand_in,
                  leave=False) as bar:
            on = self.device if cuda else None
            pairs = (chunks.vision_frames if chunks is not None else None) or BATCH_PAIRS
            if chunks is None:
                features, prepared = stream_video(self.model, self.processor, video, question, options, on, pairs,
                                                  stand_in=stand_in)
            else:  # the decoder's chunks run as their features land
                pipeline, features, prepared = stream_prefill(self.model, self.processor, video, question, options,
                                                             chunks, on, pairs, stand_in=stand_in)
            if cuda:
                synchronize_gpus()
            bar.update(1)
        prepared.seconds = time.perf_counter() - started
        vision = stats.vision_seconds
        overlapped = (pipeline.next, len(pipeline.bounds)) if chunks is not None else (0, 1)
        t0 = time.perf_counter()
        if chunks is None:
            state = chunked_prefill(self.model, self._on_device(prepared.inputs), ChunkConfig(prepared.total_tokens),
                                    features)
        else:
            while not pipeline.done:
                pipeline.step(*features)
            state = pipeline.state()
            del pipeline
        if cuda:
            synchronize_gpus()
        prefill = time.perf_counter() - t0
        if not keep_features:
            features = None
        new = greedy_decode(self.model, state, max_new_tokens)[0]
        del state
        if cuda:
            synchronize_gpus()
        total = time.perf_counter() - t0
        record = self._record(new, prefill, vision, total - prefill)
        record.set_video(prepared)
        record.streamed = True
        record.decoder_chunks_streamed, record.decoder_chunks = overlapped
        return record, features, prepared

    def _generate(self, inputs: dict, max_new_tokens: int) -> RunRecord:
        attn, stats = self.attn, self.model.prism_stats
        stats.reset()
        bar = tqdm(total=max_new_tokens, desc=f"generating ({attn})", disable=not self.progress, leave=False)
        cuda = self.device.startswith("cuda")
        if cuda:
            synchronize_gpus()
        t0 = time.perf_counter()
        if self.chunks is None:
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                          streamer=_TokenProgress(bar))
            new = out[0, inputs["input_ids"].shape[1]:]
        else:
            state = chunked_prefill(self.model, inputs, self.chunks)
            if cuda:
                synchronize_gpus()
            stats.prefill_seconds = time.perf_counter() - t0
            new = greedy_decode(self.model, state, max_new_tokens)[0]
            bar.update(new.numel())
            bar.close()
        if cuda:
            synchronize_gpus()
        total = time.perf_counter() - t0
        prefill = stats.prefill_seconds or 0.0
        return self._record(new, prefill, stats.vision_seconds, total - prefill)

    def _record(self, new: torch.Tensor, prefill_s: float, vision_s: float | None, decode_s: float) -> RunRecord:
        """The RunRecord of a generation that gave tokens `new`, with what model.prism_stats recorded of it."""
        stats, prism = self.model.prism_stats, self.attn == "prism"
        answer = self.processor.batch_decode(new[None], skip_special_tokens=True)[0].strip()
        summary = stats.summary()
        return RunRecord(self.attn, answer, prefill_s, vision_s, decode_s, int(new.numel()),
                         stats.mean_density if prism else 1.0, stats.sparse_layers if prism else 0,
                         summary["layers"], summary["dense_reasons"] if prism else [],
                         stats.layer_report() if prism else [])

    def check_against_dense(self, prepared_or_inputs: PreparedVideo | dict) -> list[dict]:
        """One untimed Prism prefill in which every sparse layer also runs dense attention on the same inputs:
        PrismRunStats.layer_report() with each layer's kept blocks and output error against dense."""
        inputs = prepared_or_inputs.inputs if isinstance(prepared_or_inputs, PreparedVideo) else prepared_or_inputs
        return self._checked_prefill(inputs)

    def _checked_prefill(self, inputs: dict, features: tuple | None = None) -> list[dict]:
        """check_against_dense's report; with `features` (the tower's, streamed), one decoder pass over them."""
        inputs = self._on_device(inputs)
        previous, stats = self.attn, self.model.prism_stats
        self.set_attention("prism")
        stats.reset()
        stats.check_against_dense = True
        try:
            with torch.no_grad():
                if features is None:
                    self.model(**inputs)
                else:
                    chunked_prefill(self.model, inputs, ChunkConfig(int(inputs["input_ids"].shape[1])), features)
            return stats.layer_report()
        finally:
            stats.check_against_dense = False
            self.set_attention(previous)

    def _on_device(self, inputs: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

class VideoQA:
    """Python API mirroring the CLI: VideoQA(model=..., attn=...)(video, question) -> dict."""

    def __init__(self, model: str = DEFAULT_MODEL, attn: str = "prism", prism: PrismConfig | None = None,
                 video: VideoOptions | None = None, max_new_tokens: int = 128, device: str | None = None,
                 dtype: str = "auto", random_weights: bool = False, progress: bool = True, vision: str = "varlen",
                 chunks: ChunkConfig | None = None, stream: bool = True,
                 stream_chunks: ChunkConfig | None = STREAM_CHUNKS):
        """stream: decode the video while the vision tower runs (VideoSession.run_streamed), per mode, where the
        video can be streamed (else in a row: decoding, the processor, then the prefill; the result's "streamed"
        says which); False: always in a row. stream_chunks: VideoSession's (Prism's decoder pipelined behind the
        decoding in chunks of 8192 tokens; None: one decoder pass after the stream; dense runs always take one)."""
        if attn not in ("prism", "dense", "compare"):
            raise ValueError(f"attn must be prism, dense or compare, got {attn!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        self.attn, self.video_opts, self.max_new_tokens = attn, video or VideoOptions(), max_new_tokens
        self.stream = stream
        self.session = VideoSession(model, prism, device, dtype, random_weights,
                                    attn="dense" if attn == "dense" else "prism", progress=progress, vision=vision,
                                    chunks=chunks, stream_chunks=stream_chunks)
        self.model, self.processor, self.device = self.session.model, self.session.processor, self.session.device
        self.model_name, self.prism_config = model, self.session.prism_config

    def prepare(self, video: str, question: str) -> PreparedVideo:
        return self.session.prepare(video, question, self.video_opts)

    def __call__(self, video: str, question: str, warmup: bool | None = None) -> dict:
        modes = ["dense", "prism"] if self.attn == "compare" else [self.attn]
        if warmup is None:  # one-time costs (kernel compiles, allocations) stay out of the timings
            warmup = self.device.startswith("cuda") or len(modes) > 1
        check = len(modes) > 1 and self.session.chunks is None  # compare: one unchunked pass checked against dense
        runs, prepared = None, None
        if self.stream:
            try:
                runs = {mode: self.session.run_streamed(video, question, self.video_opts, mode, self.max_new_tokens,
                                                        warmup=warmup, check_against_dense=check)
                        for mode in modes}
            except StreamingUnavailable:  # raised before the first run did any work: run it in a row
                runs = None
        if runs is None:
            prepared = self.prepare(video, question)
            runs = {mode: self.session.run(prepared, mode, self.max_new_tokens, warmup=warmup) for mode in modes}
        main = runs.get("prism") or runs["dense"]
        streamed = main.streamed
        result = {
            "video": video, "question": question, "model": self.model_name,
            "random_weights": self.session.random_weights, "device": self.session.device_name,
            "frames": main.frames, "frame_size": list(main.frame_size),
            "video_seconds": round((prepared.info if prepared is not None else probe(video)).duration, 3),
            "visual_tokens": main.visual_tokens, "total_tokens": main.total_tokens,
            "video_s": main.video_s, "streamed": streamed, "vision_attention": self.session.vision,
            "runs": {m: r.to_dict(video=streamed) for m, r in runs.items()},
        }
        result["answer"] = main.answer
        if len(runs) == 2:
            result["first_token_speedup"] = runs["dense"].first_token_s / max(runs["prism"].first_token_s, 1e-9)
            if same_decoder_work(runs["dense"], runs["prism"]):
                # streamed, prefill_s is the decoder's alone (the tower ran inside video_s)
                result["prefill_speedup"] = runs["dense"].prefill_s / max(runs["prism"].prefill_s, 1e-9)
            result["answers_agree"] = runs["dense"].answer == runs["prism"].answer
            if check:
                result["layers_vs_dense"] = (runs["prism"].layers_vs_dense if streamed
                                             else self.session.check_against_dense(prepared))
        return result

def printable(text: str) -> str:
    """Text safe for a terminal: control and other non-printing characters as escapes (\\x1c), newlines kept."""
    return "".join(c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii") for c in text)


CPU_TIMING_NOTE = ("timings on a CPU are not a speed measure: the Triton kernels run in the interpreter or as torch "
                   "twins here; GPU speed-ups are in benchmarks/results/*.md")


def _secs(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def format_report(r: dict) -> str:
    """A VideoQA result as the CLI's text report."""
    lines = []
    if r["random_weights"]:
        lines.append("NOTE: random weights - the answer is meaningless (the attention and its timings are real).")
    lines.append(f"answer: {printable(r['answer'])}")
    size = f" at {r['frame_size'][0]}x{r['frame_size'][1]} (width x height)" if "frame_size" in r else ""
    lines.append(f"frames: {r['frames']}{size}  "
                 f"visual tokens: {r['visual_tokens']}  total tokens: {r['total_tokens']}  device: {r['device']}")
    for mode, run in r["runs"].items():
        dens = ""
        if mode == "prism" and run["mean_density"] is not None:
            dens = f"  mean density {run['mean_density']:.3f}, sparse in {run['sparse_layers']}/{run['layers']} layers"
            if run["dense_reasons"]:
                dens += f" (dense: {'; '.join(run['dense_reasons'])})"
        vision = run["vision_s"] or 0.0
        if run.get("streamed"):
            chunks = run.get("decoder_chunks_streamed", 0)
            also = f" and {chunks} of {run['decoder_chunks']} decoder chunks" if chunks else ""
            rest = "rest of the decoder prefill" if chunks else "decoder prefill"
            stage = (f"video decoded while the vision tower{also} ran {_secs(run['video_s'])} (tower {_secs(vision)} "
                     f"of it) + {rest} {_secs(run['prefill_s'])} = first token at "
                     f"{_secs(run['video_s'] + run['prefill_s'])}")
        else:
            stage = (f"video {_secs(r['video_s'])} + vision tower {_secs(vision)} + decoder prefill "
                     f"{_secs(run['prefill_s'] - vision)} = first token at {_secs(r['video_s'] + run['prefill_s'])}")
        lines.append(f"{mode:>6}: {stage}; decode {_secs(run['decode_s'])} ({run['new_tokens']} tokens){dens}")
    if r.get("layers_vs_dense"):
        lines.append("per decoder layer, Prism against dense attention on the same inputs:")
        for row in r["layers_vs_dense"]:
            what = (f"attention output rel. error vs dense {row['dense_rel_err']:.2e}" if row["sparse"]
                    else f"ran dense ({row['reason']})")
            lines.append(f"  layer {row['layer']:>2}: kept {row['kept_blocks']}/{row['total_blocks']} blocks "
                         f"({row['density']:.1%}), {what}")
        if r["random_weights"]:
            lines.append("  (random weights spread attention evenly, so every dropped block costs accuracy; on real "
                         "weights see benchmarks/results/fidelity.md)")
    if "first_token_speedup" in r:
        if r["device"] == "cpu":
            lines.append(CPU_TIMING_NOTE)
        else:
            decoder = "decoder " if r.get("streamed") else ""
            what = f"first token {r['first_token_speedup']:.2f}x sooner"
            if "prefill_speedup" in r:
                what = f"{decoder}prefill speed-up {r['prefill_speedup']:.2f}x, {what}"
            else:  # Prism's chunks ran inside the stream: its prefill_s is what was left after it
                what += " (decoder prefills not compared: Prism's ran pipelined behind the decoding)"
            lines.append(f"on {r['device']}: {what} (dense = transformers' SDPA in the vision tower and the decoder; "
                         f"prism = {r['vision_attention']} vision attention + Prism)")
        lines.append(f"answers agree: {r['answers_agree']}")
    return "\n".join(lines)
