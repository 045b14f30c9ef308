"""Vision-tower attention in a few batched launches per layer instead of one SDPA call per window or frame.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL vision towers attend within segments of the packed patch sequence
(frames; for Qwen2.5-VL also 64-patch windows), given as cu_seqlens: non-causal, block-diagonal attention.
With attn_implementation "sdpa" transformers splits the sequence and calls SDPA once per segment - 63,040 calls
per forward at 35,840 visual tokens of Qwen2.5-VL-7B, which leaves the GPU idle behind the host. transformers
hands cu_seqlens to one call only for implementations whose registered name contains "flash"
(transformers.utils.generic.is_flash_attention_requested), hence the name of this entry.

varlen_attention groups the segments by length (a video has a handful of distinct lengths: full windows,
edge windows, whole frames) and runs one batched SDPA call per group; segments of one length that lie back to
back are viewed in place, others are gathered by an index built once per cu_seqlens tensor.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VISION_ATTN_NAME = "prism_flash_varlen"


@dataclass(frozen=True)
class SegmentGroup:
    """`count` segments of `length` tokens: back to back from token `start` (index None), or at `index`
    (token positions [count * length], on the device)."""

    length: int
    count: int
    start: int = 0
    index: torch.Tensor | None = None


@dataclass(frozen=True)
class SegmentPlan:
    total: int  # tokens covered (cu_seqlens[-1])
    groups: tuple[SegmentGroup, ...]


def plan_segments(cu_seqlens: torch.Tensor) -> SegmentPlan:
    """Group the segments of cu_seqlens [S + 1] (ascending, from 0) by length; the one host read of cu_seqlens."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or any(b < a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError("cu_seqlens must start at 0 and never decrease")
    by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            by_length.setdefault(end - start, []).append(start)
    groups = []
    for length, starts in sorted(by_length.items()):
        if starts == list(range(starts[0], starts[0] + length * len(starts), length)):
            groups.append(SegmentGroup(length, len(starts), start=starts[0]))
        else:
            first = torch.tensor(starts, device=cu_seqlens.device)
            index = (first[:, None] + torch.arange(length, device=cu_seqlens.device)[None, :]).reshape(-1)
            groups.append(SegmentGroup(length, len(starts), index=index))
    return SegmentPlan(bounds[-1], tuple(groups))


# Plans of the last few cu_seqlens tensors: every layer of one forward receives the same tensor object, so the
# host reads it once per forward, not once per layer.
_plans: list[tuple[weakref.ref, SegmentPlan]] = []


def _cached_plan(cu_seqlens: torch.Tensor) -> SegmentPlan:
    for ref, plan in _plans:
        if ref() is cu_seqlens:
            return plan
    plan = plan_segments(cu_seqlens)
    _plans.insert(0, (weakref.ref(cu_seqlens), plan))
    del _plans[4:]
    return plan


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Non-causal attention within each segment of cu_seqlens. q/k/v [1, H, T, D] (any strides) -> [1, T, H, D]."""
    if q.dim() != 4 or q.shape[0] != 1 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"varlen_attention takes q, k, v of one shape [1, heads, tokens, head_dim], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    _, h, total, d = q.shape
    plan = _cached_plan(cu_seqlens)
    if plan.total != total:
        raise ValueError(f"cu_seqlens ends at {plan.total}, but q/k/v have {total} tokens")
    tokens = [t[0].transpose(0, 1) for t in (q, k, v)]  # [T, H, D] views
    out = torch.empty(total, h, d, device=q.device, dtype=q.dtype)
    for g in plan.groups:
        if g.index is None:
            sl = slice(g.start, g.start + g.count * g.length)
            qg, kg, vg = (t[sl].view(g.count, g.length, h, d).transpose(1, 2) for t in tokens)
        else:
            qg, kg, vg = (t[g.index].view(g.count, g.length, h, d).transpose(1, 2) for t in tokens)
        og = F.scaled_dot_product_attention(qg, kg, vg, scale=scale).transpose(1, 2).reshape(-1, h, d)
        if g.index is None:
            out[sl] = og
        else:
            out.index_copy_(0, g.index, og)
    return out[None]


def vision_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                             **kwargs):
    """AttentionInterface function for Qwen-VL vision towers: ([1, T, H, D], None) like transformers' flash entry."""
    if cu_seq_lens_q is None or (cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q
                                 and not torch.equal(cu_seq_lens_q, cu_seq_lens_k)):
        raise ValueError(f"{VISION_ATTN_NAME} is the vision-tower attention of Qwen-VL models: it needs one cu_seqlens "
                         "for queries and keys (set it on the vision config only)")
    if dropout > 0.0 or attention_mask is not None:
        raise ValueError(f"{VISION_ATTN_NAME} supports neither attention dropout nor an attention mask")
    return varlen_attention(query, key, value, cu_seq_lens_q, scaling), None


# (input linears, output linear) attribute names of the Qwen-VL vision MLPs: Qwen2.5-VL, Qwen3-VL, Qwen2-VL.
MLP_LAYOUTS = ((("gate_proj", "up_proj"), "down_proj"), (("linear_fc1",), "linear_fc2"), (("fc1",), "fc2"))


def _padded_linear(linear: torch.nn.Linear, out_features: int | None = None, in_features: int | None = None):
    """A copy of `linear` with zero rows (more outputs) or zero columns (more inputs) appended."""
    out_f, in_f = out_features or linear.out_features, in_features or linear.in_features
    new = torch.nn.Linear(in_f, out_f, bias=linear.bias is not None, device=linear.weight.device,
                          dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:linear.out_features, :linear.in_features] = linear.weight
        if linear.bias is not None:
            new.bias.zero_()
            new.bias[:linear.out_features] = linear.bias
    return new.requires_grad_(linear.weight.requires_grad)


def align_mlp_widths(tower: torch.nn.Module, multiple: int = 64) -> int:
    """Pad the hidden width of the tower's MLPs to a multiple of `multiple` with zero weights; returns how many MLPs
    changed. The outputs stay the same (the padded units see zero weights and bias, their activation of 0 is 0 and
    the output layer ignores them), but cuBLAS can use its fast kernels: Qwen2.5-VL's width 3420 is not a multiple
    of 8, and its MLP GEMMs ran on sm80 kernels, half the tower's time on an H200 (docs/lessons.md). It is not
    undone by switching attention; the vision config's intermediate_size follows, so a saved model loads padded."""
    changed = 0
    for module in tower.modules():
        for ins, out in MLP_LAYOUTS:
            first = [getattr(module, name, None) for name in ins]
            last = getattr(module, out, None)
            if not all(isinstance(m, torch.nn.Linear) for m in first + [last]):
                continue
            width = last.in_features
            act = getattr(module, "act_fn", None) or getattr(module, "act", None)
            zero = torch.zeros(1, device=last.weight.device, dtype=last.weight.dtype)
            if width % 8 == 0 or act is None or float(act(zero).abs()) != 0.0:
                continue
            padded = -(-width // multiple) * multiple
            for name, m in zip(ins, first):
                setattr(module, name, _padded_linear(m, out_features=padded))
            setattr(module, out, _padded_linear(last, in_features=padded))
            if hasattr(module, "intermediate_size"):
                module.intermediate_size = padded
            changed += 1
    config = getattr(tower, "config", None)
    if changed and getattr(config, "intermediate_size", None) is not None:
        config.intermediate_size = -(-config.intermediate_size // multiple) * multiple  # save_pretrained stays loadable
    return changed


def register_with_transformers() -> None:
    """Register the vision entry with transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VISION_ATTN_NAME, vision_attention_forward)
