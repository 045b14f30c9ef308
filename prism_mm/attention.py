"""prism_attention: estimate the block selection, then run causal block-sparse attention over it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .config import PrismConfig
from .kernels import reference as ref
from .selection import BlockSelection, estimate, resolve_backend
from .spectral import RopeLayout, SpectralBands

if TYPE_CHECKING:
    from .stats import PrismRunStats

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128, 256)


@dataclass
class PrismStats:
    """What one prism_attention call did. `selection` is None when it fell back to dense."""

    density: torch.Tensor  # [B, Hq] fraction of causal blocks computed (1.0 for dense)
    sparse: bool
    selection: BlockSelection | None = None
    reason: str = ""  # why it ran dense


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError naming the problem for inputs the kernels cannot take."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [batch, heads, tokens, head_dim], got {getattr(t, 'shape', type(t))}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; cast to one of float16, bfloat16, float32")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, hq, q_len, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {d} is not supported; supported head dims: {SUPPORTED_HEAD_DIMS}")
    if hq % k.shape[1]:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({k.shape[1]})")
    if q_len > k.shape[2]:
        raise ValueError(f"q_len ({q_len}) exceeds kv_len ({k.shape[2]}): queries must be the last kv positions")


def dense_attention(q, k, v, scale: float | None = None) -> torch.Tensor:
    """Dense causal SDPA with queries aligned to the end of the keys (GQA without repeat_kv)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if q_len == kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    qpos = torch.arange(q_len, device=q.device)[:, None] + (kv_len - q_len)
    mask = torch.arange(kv_len, device=q.device)[None, :] <= qpos
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def prism_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: PrismConfig | None = None,
    *,
    bands: SpectralBands | None = None,
    rope: RopeLayout | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_stats: bool = False,
):
    """Prism causal attention. q [B, Hq, Lq, D] (after RoPE), k/v [B, Hkv, Lk, D], Lq <= Lk.

    The band dims come from `bands`, else from `rope` (the model's RoPE layout), else from plain
    RoPE over all of head_dim. Query lengths under config.min_sparse_len run dense SDPA.
    Returns the output [B, Hq, Lq, D] (a view of a [B, Lq, Hq, D] buffer on the Triton path), and
    a PrismStats when return_stats.
    """
    config = config or PrismConfig()
    check_qkv(q, k, v)
    backend = resolve_backend(backend, q.device)
    b, hq, q_len, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    def dense(reason: str, selection: BlockSelection | None = None):
        out = dense_attention(q, k, v, scale)
        stats = PrismStats(torch.ones(b, hq, device=q.device), sparse=False, selection=selection, reason=reason)
        return (out, stats) if return_stats else out

    if q_len < max(config.min_sparse_len, 2):
        return dense("shorter than min_sparse_len")
    if bands is None:
        rope = rope or RopeLayout(head_dim=d)
        if rope.head_dim != d:
            raise ValueError(f"rope.head_dim={rope.head_dim} does not match the inputs' head_dim={d}")
        bands = rope.bands(*config.band_dims(d))
    selection = estimate(q, k, config, bands, backend)
    density = selection.density()
    if config.max_density < 1.0 and float(density.mean()) > config.max_density:
        return dense("selection denser than max_density", selection)
    if backend == "triton":
        from .kernels.block_sparse import block_sparse_attention

        out = torch.empty(b, q_len, hq, d, device=q.device, dtype=q.dtype).transpose(1, 2)
        block_sparse_attention(q, k, v, selection.kv_num_blocks, selection.kv_indices, config.block_size, scale, out=out)
    else:
        out = ref.block_sparse_attention(q, k, v, selection.kv_num_blocks, selection.kv_indices, config.block_size, scale)
    if not return_stats:
        return out
    return out, PrismStats(density, sparse=True, selection=selection)


# --------------------------------------------------------------------------------------------
# transformers integration: the "prism" entry of AttentionInterface
# --------------------------------------------------------------------------------------------
ATTN_NAME = "prism"


@dataclass
class PrismLayer:
    """Prism settings of one decoder attention module (set by prism_mm.enable_prism)."""

    config: PrismConfig
    bands: SpectralBands
    stats: "PrismRunStats"
    backend: str = "auto"


def _is_aligned_causal(mask: torch.Tensor, q_len: int, kv_len: int) -> bool:
    """True if a [B, 1|H, q, kv] mask is plain causal with queries at the end of the keys.

    transformers' masks are causal AND padding (AND, for static caches, "slot is filled"), i.e. a
    subset of the aligned causal pattern, so two rows decide: the last query sees every key (no
    padding, no empty slots) and the first sees exactly kv_len - q_len + 1 keys (alignment).
    """
    allowed = mask if mask.dtype == torch.bool else mask == 0
    first_ok = (allowed[..., 0, :].sum(-1) == kv_len - q_len + 1).all()
    return bool(allowed[..., -1, :].all() and first_ok)


def prism_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    """AttentionInterface function: Prism for long causal prefill, transformers' SDPA otherwise.

    Receives query [B, Hq, q, D] after (M)RoPE and key/value [B, Hkv, kv, D] after the cache
    update; returns ([B, q, Hq, D], None) like every transformers attention function.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from .stats import LayerRecord

    layer: PrismLayer | None = getattr(module, "prism", None)
    if layer is None:
        raise RuntimeError(
            f"{type(module).__name__} uses attn_implementation='prism' but was not set up by prism_mm: "
            "call prism_mm.enable_prism(model, PrismConfig(...)) or load with prism_mm.load_model(..., attn='prism')"
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    reason = ""
    if q_len < max(layer.config.min_sparse_len, 2):
        reason = "decoding" if q_len == 1 else "shorter than min_sparse_len"
    elif kwargs.get("sliding_window") is not None:
        reason = "sliding-window layer"
    elif dropout > 0.0:
        reason = "attention dropout (training)"
    elif attention_mask is not None and not _is_aligned_causal(attention_mask, q_len, kv_len):
        reason = "padding or static-cache mask"
    if reason:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        ones = torch.ones(query.shape[0], query.shape[1], device=query.device)
        layer.stats.record(module.layer_idx, LayerRecord(ones, False, q_len, kv_len, reason))
        return out, None
    out, stats = prism_attention(
        query, key, value, layer.config, bands=layer.bands, scale=scaling, backend=layer.backend, return_stats=True
    )
    kept = stats.selection if layer.stats.keep_selections else None
    layer.stats.record(module.layer_idx, LayerRecord(stats.density, stats.sparse, q_len, kv_len, stats.reason, kept))
    return out.transpose(1, 2), None


def register_with_transformers() -> None:
    """Register "prism" with transformers' attention and mask interfaces (idempotent).

    The mask function is SDPA's: it returns None for plain causal inputs, and a real mask when
    there is padding, which prism_attention_forward then hands to dense SDPA.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, prism_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
