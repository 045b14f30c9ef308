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


@dataclass(frozen=True)
class MlpPadding:
    """What align_mlp_widths did to one MLP (kept on it as `module.prism_mlp_padding`): the loaded width, the padded
    one, the linears' attribute names and the state-dict hooks that hide the padding."""

    width: int
    padded: int
    ins: tuple[str, ...]
    out: str
    hooks: tuple


def _resize_linear_(linear: torch.nn.Linear, out_features: int, in_features: int) -> None:
    """Give `linear` (the same module) weights of [out_features, in_features]: zeros appended, or the tail cut off."""
    with torch.no_grad():
        weight = linear.weight.new_zeros(out_features, in_features)
        rows, cols = min(out_features, linear.out_features), min(in_features, linear.in_features)
        weight[:rows, :cols] = linear.weight[:rows, :cols]
        linear.weight = torch.nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
        if linear.bias is not None:
            bias = linear.bias.new_zeros(out_features)
            bias[:rows] = linear.bias[:rows]
            linear.bias = torch.nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = out_features, in_features


def _loaded_shapes(pad: MlpPadding, prefix: str):
    """(state-dict key, loaded shape's slices) of each padded tensor of one MLP."""
    for name in pad.ins:
        yield f"{prefix}{name}.weight", (slice(0, pad.width),)
        yield f"{prefix}{name}.bias", (slice(0, pad.width),)
    yield f"{prefix}{pad.out}.weight", (slice(None), slice(0, pad.width))


def _unpadded_state_dict(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook: the padded MLP's tensors in their loaded shapes (views of the padded ones)."""
    for key, index in _loaded_shapes(module.prism_mlp_padding, prefix):
        if key in state_dict:
            state_dict[key] = state_dict[key][index]


def _padded_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: tensors of the loaded shapes are zero-padded to the module's padded ones."""
    pad = module.prism_mlp_padding
    for key, index in _loaded_shapes(pad, prefix):
        value = state_dict.get(key)
        if value is None:
            continue
        target = module.get_parameter(key[len(prefix):])
        if value.shape != target.shape and value.shape == target[index].shape:
            padded = value.new_zeros(target.shape)
            padded[index] = value
            state_dict[key] = padded


def align_mlp_widths(tower: torch.nn.Module, multiple: int = 64) -> int:
    """Pad the hidden width of the tower's MLPs to a multiple of `multiple` with zero weights, in place (the same
    Linear modules); returns how many MLPs changed. Outputs stay the same (the padded units see zero weights and bias,
    their activation of 0 is 0 and the output layer ignores them); cuBLAS then runs its fast GEMM kernels on widths
    such as Qwen2.5-VL's 3420, which is not a multiple of 8 (docs/lessons.md). The checkpoint does not change:
    state_dict() (hence save_pretrained) gives the loaded shapes, load_state_dict pads what it loads and
    config.intermediate_size stays. restore_mlp_widths undoes it."""
    changed = 0
    for module in tower.modules():
        if hasattr(module, "prism_mlp_padding"):
            continue
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
            for m in first:
                _resize_linear_(m, padded, m.in_features)
            _resize_linear_(last, last.out_features, padded)
            hooks = (module.register_state_dict_post_hook(_unpadded_state_dict),
                     module.register_load_state_dict_pre_hook(_padded_load))
            module.prism_mlp_padding = MlpPadding(width, padded, ins, out, hooks)
            changed += 1
            break
    return changed


def restore_mlp_widths(tower: torch.nn.Module) -> int:
    """Undo align_mlp_widths: each padded MLP's weights cut back to the loaded width (the same values) and its hooks
    removed; returns how many MLPs changed."""
    changed = 0
    for module in tower.modules():
        pad = getattr(module, "prism_mlp_padding", None)
        if pad is None:
            continue
        for name in pad.ins:
            linear = getattr(module, name)
            _resize_linear_(linear, pad.width, linear.in_features)
        last = getattr(module, pad.out)
        _resize_linear_(last, last.out_features, pad.width)
        for hook in pad.hooks:
            hook.remove()
        del module.prism_mlp_padding
        changed += 1
    return changed


def register_with_transformers() -> None:
    """Register the vision entry with transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VISION_ATTN_NAME, vision_attention_forward)
