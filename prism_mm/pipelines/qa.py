"""VideoQA: the one-call form the CLI and the notebooks use.

    qa = VideoQA("tiny-qwen2.5-vl", attn="compare")
    result = qa("clip.mp4", "What happens?")      # a dict; format_report(result) prints it
    again = qa("clip.mp4", "What colour is it?")  # answered from the video's kept prefix (result["reused"])
    chat = qa.chat("clip.mp4"); chat.ask("What happens?"); chat.ask("And then?")

On a GPU the one-time costs (kernel compiles) are paid once at construction, on a stand-in (warmup_s).
"""
from __future__ import annotations

from ..config import PrismConfig
from ..models import ATTENTIONS
from .prefill import ChunkConfig
from .prefix import PrefixStore
from .record import same_decoder_work
from .session import DEFAULT_MODEL, STREAM_CHUNKS, Chat, VideoSession
from .video import VideoOptions

MODES = ATTENTIONS + ("compare",)  # "compare": both, each from its own prefix, checked against each other


class VideoQA:
    """Python API mirroring the CLI: VideoQA(model=..., attn=...)(video, question) -> dict."""

    def __init__(self, model: str = DEFAULT_MODEL, attn: str = "prism", prism: PrismConfig | None = None,
                 video: VideoOptions | None = None, max_new_tokens: int = 128, device: str | None = None,
                 dtype: str = "auto", random_weights: bool = False, progress: bool = True, vision: str = "varlen",
                 chunks: ChunkConfig | None = None, stream: bool = True,
                 stream_chunks: ChunkConfig | None = STREAM_CHUNKS, warmup: bool | None = None,
                 prefixes: PrefixStore | None = None):
        """attn: "prism", "dense" or "compare" (both, each from its own prefix, checked against each other).
        stream / stream_chunks / chunks / prefixes: VideoSession's. warmup: pay the one-time costs at construction
        (None: on a GPU)."""
        if attn not in MODES:
            raise ValueError(f"attn must be one of {', '.join(MODES)}, got {attn!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        self.attn, self.video_opts, self.max_new_tokens = attn, video or VideoOptions(), max_new_tokens
        self.session = VideoSession(model, prism, device, dtype, random_weights,
                                    attn="dense" if attn == "dense" else "prism", progress=progress, vision=vision,
                                    chunks=chunks, stream_chunks=stream_chunks, stream=stream, prefixes=prefixes)
        self.model, self.processor, self.device = self.session.model, self.session.processor, self.session.device
        self.model_name, self.prism_config = model, self.session.prism_config
        if warmup is None:
            warmup = self.device.startswith("cuda")
        self.warmup_s = self.session.warm_up() if warmup else None

    @property
    def modes(self) -> list[str]:
        return ["dense", "prism"] if self.attn == "compare" else [self.attn]

    def __call__(self, video: str, question: str) -> dict:
        """Answer `question` about `video` in each mode, from the video's kept prefix where there is one."""
        check = len(self.modes) > 1 and self.session.chunks is None  # compare: a one-chunk prefix checked vs dense
        runs, handles = {}, {}
        for mode in self.modes:
            self.session.set_attention(mode)
            handles[mode] = self.session.load_video(video, self.video_opts, check_against_dense=check and mode == "prism")
            runs[mode] = handles[mode].ask(question, self.max_new_tokens)
        main_mode = "prism" if "prism" in runs else "dense"
        main, prefix = runs[main_mode], handles[main_mode].prefix_info
        result = {
            "video": video, "question": question, "model": self.model_name,
            "random_weights": self.session.random_weights, "device": self.session.device_name,
            "frames": main.frames, "frame_size": list(main.frame_size), "video_seconds": round(prefix.video_seconds, 3),
            "visual_tokens": main.visual_tokens, "total_tokens": main.total_tokens, "video_s": main.video_s,
            "streamed": main.streamed, "reused": main.reused, "vision_attention": self.session.vision,
            "runs": {m: r.to_dict() for m, r in runs.items()}, "answer": main.answer, "warmup_s": self.warmup_s,
        }
        if len(runs) == 2:
            dense, prism = runs["dense"], runs["prism"]
            result["first_token_speedup"] = dense.first_token_s / max(prism.first_token_s, 1e-9)
            if same_decoder_work(dense, prism):
                # streamed, prefill_s is the decoder's alone (the tower ran inside video_s)
                result["prefill_speedup"] = dense.prefill_s / max(prism.prefill_s, 1e-9)
            result["answers_agree"] = dense.answer == prism.answer
            if check:
                result["layers_vs_dense"] = prefix.build.layers_vs_dense
        return result

    def chat(self, video: str) -> Chat:
        """A conversation about `video` in the main mode (prism, or dense with attn="dense")."""
        mode = "dense" if self.attn == "dense" else "prism"
        self.session.set_attention(mode)
        return self.session.load_video(video, self.video_opts).chat()
