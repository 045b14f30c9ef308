"""Shared pieces of the selection probes: (density, recall) records; the forced-sink/diagonal top-p masks
are benchmarks.fidelity's (with_sink_diag, forced_top_p)."""
import torch


def record(res: dict, name: str, mask: torch.Tensor, valid: torch.Tensor, mass: torch.Tensor) -> None:
    """Append (density over the causal blocks, mean attention-mass recall) of one layer's mask."""
    density = (mask.sum() / (valid.expand_as(mask).sum())).item()
    res.setdefault(name, []).append((density, (mass * mask).sum(-1).mean().item()))
