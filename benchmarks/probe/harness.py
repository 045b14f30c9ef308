"""Shared pieces of the selection probes: a block mask with the sink and diagonal forced in, and (density, recall)."""
import torch

from prism_mm.kernels import reference as ref


def with_sink_diag(mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[H, NQB, NKB] mask plus key block 0 and the diagonal, restricted to the causal blocks."""
    mask = mask.clone()
    mask[..., 0] = True
    i = torch.arange(mask.shape[-1])
    mask[:, i, i] = True
    return mask & valid


def topp_mask(probs: torch.Tensor, valid: torch.Tensor, thr: float) -> torch.Tensor:
    return with_sink_diag(ref.top_p_mask(probs, valid.expand_as(probs), thr), valid)


def record(res: dict, name: str, mask: torch.Tensor, valid: torch.Tensor, mass: torch.Tensor) -> None:
    """Append (density over the causal blocks, mean attention-mass recall) of one layer's mask."""
    density = (mask.sum() / (valid.expand_as(mask).sum())).item()
    res.setdefault(name, []).append((density, (mass * mask).sum(-1).mean().item()))
