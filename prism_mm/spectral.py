"""A model's rotary embedding (RopeSpec) -> which head dims form Prism's high- and low-frequency bands.

Every Qwen / Llama attention applies RoPE in the rotate_half form: dim pair i is (i, i + d/2) and
rotates at inv_freq[i] = theta^(-2i/r) (r = rotary dims). Multimodal RoPE keeps these frequencies
but drives each pair by the temporal, height or width position id:
- Qwen2-VL / Qwen2.5-VL ("sectioned"): mrope_section [t, h, w] splits the pairs into consecutive runs.
- Qwen3-VL ("interleaved"): pairs cycle t, h, w (i % 3 == 1 -> h, i % 3 == 2 -> w) up to 3x each
  section length; the rest stay temporal.
Bands are chosen by each pair's actual frequency, never by hard-coded dim ranges.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

AXES = ("t", "h", "w")


@dataclass(frozen=True)
class SpectralBands:
    """Head-dim indices (ascending) scored in each band."""

    high: tuple[int, ...]
    low: tuple[int, ...]

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor(self.high, dtype=torch.long, device=device),
            torch.tensor(self.low, dtype=torch.long, device=device),
        )


@dataclass(frozen=True)
class RopeSpec:
    """What Prism needs to know about a model's rotary embedding: each dim pair's frequency and position axis."""

    head_dim: int
    theta: float = 10000.0
    rotary_dims: int | None = None  # None: all of head_dim rotates (partial_rotary_factor < 1 otherwise)
    mrope_section: tuple[int, ...] | None = None  # per-axis pair counts (t, h, w); None = plain 1-D RoPE
    interleaved: bool = False  # Qwen3-VL style interleaved MRoPE

    def __post_init__(self) -> None:
        if self.head_dim < 4 or self.head_dim % 2:
            raise ValueError(f"RopeSpec.head_dim must be an even int >= 4, got {self.head_dim}")
        r = self.rotary_dims if self.rotary_dims is not None else self.head_dim
        if r % 2 or not 0 < r <= self.head_dim:
            raise ValueError(f"RopeSpec.rotary_dims must be even and in (0, head_dim], got {self.rotary_dims}")
        if self.mrope_section is not None and sum(self.mrope_section) != r // 2:
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must sum to the number of rotary pairs {r // 2}"
            )

    @property
    def n_pairs(self) -> int:
        return self.head_dim // 2

    def pair_frequencies(self) -> torch.Tensor:
        """Rotary frequency (radians per position) of each dim pair i = (i, i + head_dim/2); 0 if not rotated."""
        r = self.rotary_dims if self.rotary_dims is not None else self.head_dim
        i = torch.arange(self.n_pairs, dtype=torch.float64)
        freq = self.theta ** (-2.0 * i / r)
        freq[i >= r // 2] = 0.0
        return freq

    def pair_axes(self) -> tuple[str, ...]:
        """Which position axis drives each pair: 't', 'h', 'w' (MRoPE), '1d' (plain RoPE) or '-' (not rotated)."""
        r = self.rotary_dims if self.rotary_dims is not None else self.head_dim
        n_rot = r // 2
        if self.mrope_section is None:
            axes = ["1d"] * n_rot
        elif self.interleaved:
            axes = []
            for i in range(n_rot):
                axis = "t"
                for a in (1, 2):
                    if i % 3 == a and i < 3 * self.mrope_section[a]:
                        axis = AXES[a]
                axes.append(axis)
        else:
            axes = [AXES[a] for a, n in enumerate(self.mrope_section) for _ in range(n)]
        return tuple(axes + ["-"] * (self.n_pairs - n_rot))

    def bands(self, high_dims: int, low_dims: int) -> SpectralBands:
        """The `high_dims` dims of the fastest pairs and the `low_dims` dims of the slowest pairs."""
        for name, n in (("high_dims", high_dims), ("low_dims", low_dims)):
            if n % 2 or not 2 <= n <= self.head_dim:
                raise ValueError(f"{name} must be even and in [2, head_dim={self.head_dim}], got {n}")
        freq = self.pair_frequencies()
        # Stable sort by frequency, fastest first (ties keep pair order).
        order = sorted(range(self.n_pairs), key=lambda i: (-float(freq[i]), i))
        half = self.head_dim // 2

        def dims(pairs) -> tuple[int, ...]:
            return tuple(sorted([p for p in pairs] + [p + half for p in pairs]))

        return SpectralBands(high=dims(order[: high_dims // 2]), low=dims(order[self.n_pairs - low_dims // 2:]))


def _rope_dict(cfg) -> dict:
    """The rope settings of a transformers config: `rope_parameters` (v5) or `rope_scaling` (v4)."""
    out: dict = {}
    for name in ("rope_scaling", "rope_parameters"):
        value = getattr(cfg, name, None)
        if isinstance(value, dict):
            out.update(value)
    return out


def text_config(config):
    """The text (decoder) config of a VL model's config, or the config itself for a text model."""
    return getattr(config, "text_config", None) or config


def rope_spec_from_config(config) -> RopeSpec:
    """Derive the RopeSpec of a transformers model config (the text config of a VL model)."""
    cfg = text_config(config)
    n_heads = getattr(cfg, "num_attention_heads", None)
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // n_heads if n_heads else None)
    if head_dim is None:
        raise ValueError(f"cannot derive head_dim from {type(cfg).__name__}: it has neither head_dim nor hidden_size/num_attention_heads")
    rope = _rope_dict(cfg)
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise ValueError(f"{type(cfg).__name__} has no rope_theta: Prism needs a RoPE model")
    factor = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) or 1.0
    rotary = int(head_dim * factor) // 2 * 2
    section = rope.get("mrope_section")
    interleaved = bool(rope.get("mrope_interleaved", False))
    return RopeSpec(
        head_dim=int(head_dim),
        theta=float(theta),
        rotary_dims=None if rotary == head_dim else rotary,
        mrope_section=tuple(int(s) for s in section) if section else None,
        interleaved=interleaved,
    )
