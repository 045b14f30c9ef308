"""RunRecord: one answered question, timed, with what Prism did to build the video's prefix it was answered from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RunRecord:
    """One answer. When the video's prefix was built for it, video_s is the video stage (decoding, processor and, when
    streamed, the vision tower and the decoder chunks that ran while the file decoded) and prefill_s the decoder
    prefill left after it; when the prefix was reused (reused=True) both are 0. question_s is the dense chunk of the
    text after the video (the question, the assistant header) up to the first token's logits, decode_s the rest.
    mean_density, sparse_layers, dense_reasons and layer_report say what Prism did while building the prefix (1.0 /
    0 / [] / [] in dense mode)."""

    attn: str
    answer: str
    prefill_s: float
    vision_s: float | None  # of the prefix build, the vision tower's share (None without visual input)
    decode_s: float
    new_tokens: int
    mean_density: float | None
    sparse_layers: int
    layers: int = 0  # decoder layers that recorded what they did
    dense_reasons: list[str] = field(default_factory=list)  # why Prism layers ran dense
    layer_report: list[dict] = field(default_factory=list)  # PrismRunStats.layer_report() of a prism prefix
    frames: int | None = None
    frame_size: tuple[int, int] | None = None  # (width, height) of the sampled frames after resizing
    visual_tokens: int | None = None
    total_tokens: int | None = None  # the prompt: the prefix and the text after the video
    video_s: float | None = None
    streamed: bool = False  # the prefix's video stage ran the vision tower while the file decoded (vision_s its share)
    # streamed with decoder chunks: how many of them ran inside video_s, as their video features landed, and how many
    # there were (the rest are prefill_s)
    decoder_chunks_streamed: int = 0
    decoder_chunks: int = 1
    reused: bool = False  # answered from a prefix built before (the video was not decoded or prefilled again)
    question_s: float = 0.0
    question_tokens: int = 0  # tokens after the video prefilled for this answer
    prefix_tokens: int = 0

    @property
    def total_s(self) -> float:
        return (self.video_s or 0.0) + self.prefill_s + self.question_s + self.decode_s

    @property
    def first_token_s(self) -> float:
        """From the call (the video file, when its prefix was built for it) to the first answer token."""
        return (self.video_s or 0.0) + self.prefill_s + self.question_s

    def to_dict(self) -> dict:
        """The record as a JSON-ready dict, with first_token_s and total_s."""
        return {**asdict(self), "first_token_s": self.first_token_s, "total_s": self.total_s}


def same_decoder_work(a: RunRecord, b: RunRecord) -> bool:
    """True if the two runs' prefill_s time the same decoder work: both built their prefix in the same number of
    decoder chunks, none of them run inside the stream (a pipelined run's prefill_s is only what was left after it)."""
    return (not a.reused and not b.reused and a.decoder_chunks == b.decoder_chunks
            and a.decoder_chunks_streamed == b.decoder_chunks_streamed == 0)
