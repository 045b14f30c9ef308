"""Per-model selection statistics of the last forward pass (no global collector).

enable_prism() attaches one PrismRunStats to the model as `model.prism_stats`; every prism layer
records into it. Densities stay on the device until read, so recording costs no synchronisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerRecord:
    density: torch.Tensor  # [B, Hq] fraction of causal blocks computed
    sparse: bool  # False: the layer ran dense (short input, decoding, padding mask, ...)
    q_len: int
    kv_len: int
    reason: str = ""  # why it ran dense
    selection: object = None  # the BlockSelection, kept only when PrismRunStats.keep_selections


@dataclass
class PrismRunStats:
    """What prism did in the most recent prefill of a model (one record per decoder layer)."""

    layers: dict[int, LayerRecord] = field(default_factory=dict)
    prefill_seconds: float | None = None  # wall time of the last forward with more than one query token
    keep_selections: bool = False  # keep each layer's block selection (for inspection and plots)

    def reset(self) -> None:
        self.layers.clear()
        self.prefill_seconds = None

    def record(self, layer_idx: int, rec: LayerRecord) -> None:
        if rec.q_len == 1 and layer_idx in self.layers:
            return  # decoding steps do not overwrite the prefill record
        self.layers[layer_idx] = rec

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

    def summary(self) -> dict:
        return {
            "mean_density": self.mean_density,
            "sparse_layers": self.sparse_layers,
            "layers": len(self.layers),
            "prefill_seconds": self.prefill_seconds,
            "dense_reasons": sorted({r.reason for r in self.layers.values() if not r.sparse and r.reason}),
        }
