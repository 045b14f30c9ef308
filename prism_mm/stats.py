"""What Prism did: one record per attention call (PrismStats) and one summary per model run (PrismRunStats).

prism_attention(..., return_stats=True) returns a PrismStats; enable_prism() attaches one PrismRunStats
to the model as `model.prism_stats`, into which every decoder layer records its PrismStats. Densities
stay on the device until read and are computed when first read, so recording costs no synchronisation and no
launch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .kernels.blocks import BlockSelection, block_density


@dataclass
class PrismStats:
    """What one attention call did. `selection` is None when no selection was made (or it was not kept).

    Build it with `of_selection` (a sparse call: the density is computed from the selection's per-row counts when
    first read, so recording launches nothing) or `ran_dense` (a dense call).
    """

    sparse: bool  # False: ran dense SDPA (short input, decoding, padding mask, dense selection, ...)
    q_len: int
    kv_len: int
    reason: str = ""  # why it ran dense
    selection: BlockSelection | None = None
    causal_blocks: int = 0  # (query block, key block) pairs of one head's dense causal pass
    dense_rel_err: torch.Tensor | None = None  # ||out - dense|| / ||dense|| (scalar, on the device), when checked
    kv_num_blocks: torch.Tensor | None = field(default=None, repr=False)  # [B, Hq, NQB] blocks kept per row (sparse)
    known_density: torch.Tensor | None = field(default=None, repr=False)  # [B, Hq], when given rather than counted

    @classmethod
    def of_selection(cls, selection: BlockSelection) -> "PrismStats":
        """A sparse call over `selection`."""
        return cls(True, selection.q_len, selection.kv_len, selection=selection,
                   causal_blocks=selection.causal_blocks(), kv_num_blocks=selection.kv_num_blocks)

    @classmethod
    def ran_dense(cls, density: torch.Tensor, q_len: int, kv_len: int, reason: str, causal_blocks: int,
                  selection: BlockSelection | None = None) -> "PrismStats":
        """A call that ran dense attention (density [B, Hq]: 1.0 per head)."""
        return cls(False, q_len, kv_len, reason, selection, causal_blocks, known_density=density)

    @property
    def density(self) -> torch.Tensor:
        """[B, Hq] fraction of the causal blocks computed (1.0 where it ran dense); stays on the device."""
        if self.known_density is None:
            self.known_density = block_density(self.kv_num_blocks, self.causal_blocks)
        return self.known_density

    def continued_by(self, later: "PrismStats") -> "PrismStats":
        """This call's record extended by the next chunk of the same prefill (`later` starts where this one ended):
        densities weighted by causal blocks, sparse only if both were, every reason kept. Selections are dropped."""
        total = self.causal_blocks + later.causal_blocks
        density = (self.density.float() * self.causal_blocks + later.density.float() * later.causal_blocks) / max(total, 1)
        reasons = "; ".join(dict.fromkeys(r for r in (self.reason, later.reason) if r))
        errors = [e for e in (self.dense_rel_err, later.dense_rel_err) if e is not None]
        return PrismStats(self.sparse and later.sparse, self.q_len + later.q_len, later.kv_len, reasons, None,
                          total, torch.stack(errors).max() if errors else None, known_density=density)

    def kept_blocks(self) -> int:
        """Blocks computed over all batch rows and heads (every causal block where it ran dense)."""
        return round(float(self.density.float().sum()) * self.causal_blocks)

    def total_blocks(self) -> int:
        """Causal blocks over all batch rows and heads: what dense attention computes."""
        return self.density.numel() * self.causal_blocks


@dataclass
class PrismRunStats:
    """The most recent prefill of a model: one PrismStats per decoder layer, and its wall time."""

    layers: dict[int, PrismStats] = field(default_factory=dict)
    # Wall time of the last prefill: from the vision tower's start (transformers >= 5.2x encodes the video before the
    # first forward) or the first forward with more than one query token, to that forward's end.
    prefill_seconds: float | None = None
    vision_seconds: float | None = None  # of which the vision tower (Qwen-VL models with visual input)
    keep_selections: bool = False  # keep each layer's block selection (for inspection and plots)
    check_against_dense: bool = False  # also run dense attention in sparse layers and record the output error
    prefill_started: float | None = field(default=None, repr=False)  # perf_counter() of the running prefill
    hooks: list = field(default_factory=list, repr=False, compare=False)  # handles of the timing hooks (attach_stats)

    def reset(self) -> None:
        self.layers.clear()
        self.prefill_seconds = None
        self.vision_seconds = None
        self.prefill_started = None

    def start_prefill(self) -> None:
        self.prefill_started = time.perf_counter()

    def end_prefill(self) -> None:
        if self.prefill_started is not None:
            self.prefill_seconds = time.perf_counter() - self.prefill_started
            self.prefill_started = None

    def record(self, layer_idx: int, stats: PrismStats) -> None:
        previous = self.layers.get(layer_idx)
        if stats.q_len == 1 and previous is not None:
            return  # decoding steps do not overwrite the prefill record
        if previous is not None and stats.kv_len - stats.q_len == previous.kv_len > 0:
            stats = previous.continued_by(stats)  # the next chunk of a chunked prefill
        self.layers[layer_idx] = stats

    def per_layer_density(self) -> dict[int, float]:
        """Mean density over batch and heads, per layer (1.0 where the layer ran dense)."""
        return {i: float(r.density.float().mean()) for i, r in sorted(self.layers.items())}

    def per_head_density(self) -> torch.Tensor:
        """[layers, heads] density averaged over the batch (CPU tensor)."""
        rows = [r.density.float().mean(0).cpu() for _, r in sorted(self.layers.items())]
        return torch.stack(rows) if rows else torch.empty(0, 0)

    @property
    def mean_density(self) -> float | None:
        values = list(self.per_layer_density().values())
        return sum(values) / len(values) if values else None

    @property
    def sparse_layers(self) -> int:
        return sum(r.sparse for r in self.layers.values())

    def layer_report(self) -> list[dict]:
        """Per decoder layer: blocks kept of the causal total, density, sparse or why dense, and the output's
        relative error against dense attention when check_against_dense was on (None otherwise)."""
        rows = []
        for i, r in sorted(self.layers.items()):
            err = None if r.dense_rel_err is None else float(r.dense_rel_err)
            rows.append({"layer": i, "kept_blocks": r.kept_blocks(), "total_blocks": r.total_blocks(),
                         "density": float(r.density.float().mean()), "sparse": r.sparse, "reason": r.reason,
                         "dense_rel_err": err})
        return rows

    def summary(self) -> dict:
        return {
            "mean_density": self.mean_density,
            "sparse_layers": self.sparse_layers,
            "layers": len(self.layers),
            "prefill_seconds": self.prefill_seconds,
            "vision_seconds": self.vision_seconds,
            "dense_reasons": sorted({part for r in self.layers.values() if r.reason for part in r.reason.split("; ")}),
        }
