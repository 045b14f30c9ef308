"""PrismConfig: every knob of Prism attention in one frozen, validated dataclass.

Nothing here reads environment variables; a config is always passed in explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128, 256)
SELECTION_METHODS = ("prism", "cutoff", "meanpool")

# Paper defaults for head_dim 128: 64 high-frequency dims, 96 low-frequency dims.
_HIGH_FRACTION = 64 / 128
_LOW_FRACTION = 96 / 128


def _even_dims(head_dim: int, fraction: float) -> int:
    """`fraction` of head_dim, rounded down to an even number (dims come in rotary pairs), at least 2."""
    return max(2, int(head_dim * fraction) // 2 * 2)


@dataclass(frozen=True)
class PrismConfig:
    """Configuration of Prism block-sparse attention.

    Attributes:
        block_size: tokens per query/key block (power of two in 16..256).
        high_band_dims: number of head dims (both halves of the fastest-rotating pairs) scored in the
            high-frequency band; None = head_dim / 2 (64 for head_dim 128), even.
        low_band_dims: number of head dims of the slowest-rotating pairs scored in the low-frequency
            band; None = 3/4 head_dim (96 for head_dim 128), even.
        threshold_high / threshold_low: top-p probability mass kept per band, in (0, 1]. 1.0 keeps
            every causal block. Default 0.99: the fastest setting that kept perplexity within +1% and needle accuracy
            within 5 points of dense on two real models (docs/accuracy.md); the paper's 0.95 / 0.93: `paper()`.
        calibrate: rescale each band's logits by its RMS-energy temperature.
        force_sink: always keep key block 0.
        force_diagonal: always keep the key block(s) holding the query block's own positions.
        min_sparse_len: prompts (key lengths) below this use dense attention; decoding (one query) is always dense.
        max_density: when the selection keeps more than this fraction of the causal blocks (mean over
            batch and heads), run dense SDPA instead. 1.0 (the default) never falls back and never waits for the
            GPU: deciding costs one host synchronisation per layer, which stalls the host's run-ahead (measured:
            Prism slower than dense at 35,840 visual tokens with 0.8), while the sparse kernel over every block costs
            1.03-1.09x cuDNN's dense time on an H100 (32K-128K), so a nearly dense layer loses at most ~9% there.
        method: the block-selection rule, all scored from the same pooled Q/K blocks:
            "prism": the paper's dual-band calibrated top-p per row (threshold_high / threshold_low);
            "cutoff": the same two calibrated band probabilities averaged, one cutoff for every head and row
                (`cutoff`): rows and heads whose estimated mass is concentrated keep few blocks, spread ones more,
                so the block budget is shared where a per-row top-p spends it evenly;
            "meanpool": mean-pooled Q . K over all dims, uncalibrated, top-p per row (threshold_high): the baseline
                the paper improves on.
        cutoff: for method "cutoff", the mean band probability a key block needs to be kept, in (0, 1).
        dense_tail: the last `dense_tail` query tokens of each prefill (chunk) attend to every earlier token: the
            query-block rows that hold them keep all causal blocks, whatever the method. A prompt ends with the
            question, whose attention decides the answer; the last row of blocks is about 2/n_blocks of dense
            attention's work (two rows when the tail straddles a block boundary).
            0 = the paper's selection for every row. Default 128: on Qwen2.5-Coder-0.5B it raised needle-in-a-
            haystack accuracy at every method and knob (benchmarks/results/niah-*), e.g. prism at 0.95 at 32K
            tokens: 8 -> 13 of the same 20 needles (dense 15).
    """

    block_size: int = 128
    high_band_dims: int | None = None
    low_band_dims: int | None = None
    threshold_high: float = 0.99
    threshold_low: float = 0.99
    calibrate: bool = True
    force_sink: bool = True
    force_diagonal: bool = True
    min_sparse_len: int = 4096
    max_density: float = 1.0
    method: str = "prism"
    cutoff: float = 0.01
    dense_tail: int = 128

    def __post_init__(self) -> None:
        if self.block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(
                f"PrismConfig.block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {self.block_size!r}"
            )
        for name in ("high_band_dims", "low_band_dims"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2 or value % 2):
                raise ValueError(f"PrismConfig.{name} must be an even int >= 2 (or None for the default), got {value!r}")
        for name in ("threshold_high", "threshold_low"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"PrismConfig.{name} must be in (0, 1], got {value!r}")
        if not isinstance(self.min_sparse_len, int) or self.min_sparse_len < 0:
            raise ValueError(f"PrismConfig.min_sparse_len must be an int >= 0, got {self.min_sparse_len!r}")
        if not isinstance(self.max_density, (int, float)) or not 0.0 < float(self.max_density) <= 1.0:
            raise ValueError(f"PrismConfig.max_density must be in (0, 1], got {self.max_density!r}")
        if not isinstance(self.cutoff, (int, float)) or not 0.0 < float(self.cutoff) < 1.0:
            raise ValueError(f"PrismConfig.cutoff must be in (0, 1), got {self.cutoff!r}")
        if not isinstance(self.dense_tail, int) or isinstance(self.dense_tail, bool) or self.dense_tail < 0:
            raise ValueError(f"PrismConfig.dense_tail must be an int >= 0 (query tokens), got {self.dense_tail!r}")
        if self.method not in SELECTION_METHODS:
            raise ValueError(f"PrismConfig.method must be one of {SELECTION_METHODS}, got {self.method!r}")

    @classmethod
    def video(cls, **overrides) -> "PrismConfig":
        """The default for video inputs: the same as PrismConfig() (no measurement on video says otherwise; the rule
        and its numbers: docs/accuracy.md)."""
        return cls(**overrides)

    @classmethod
    def paper(cls, video: bool = False, **overrides) -> "PrismConfig":
        """The paper's setting: both band thresholds at 0.95 (0.93 for video) and its selection in every row
        (dense_tail 0). Faster than the default, and it loses accuracy on our real-weight checks (docs/accuracy.md)."""
        threshold = 0.93 if video else 0.95
        return cls(**{"threshold_high": threshold, "threshold_low": threshold, "dense_tail": 0, **overrides})

    def with_threshold(self, threshold: float) -> "PrismConfig":
        """A copy with both band thresholds set to `threshold`."""
        return replace(self, threshold_high=threshold, threshold_low=threshold)

    def band_dims(self, head_dim: int) -> tuple[int, int]:
        """(high, low) band widths for `head_dim`, validated against it."""
        high = self.high_band_dims if self.high_band_dims is not None else _even_dims(head_dim, _HIGH_FRACTION)
        low = self.low_band_dims if self.low_band_dims is not None else _even_dims(head_dim, _LOW_FRACTION)
        for name, value in (("high_band_dims", high), ("low_band_dims", low)):
            if value > head_dim:
                raise ValueError(f"PrismConfig.{name}={value} exceeds head_dim={head_dim}; use at most {head_dim}")
        return high, low
