"""prism_attention: estimate the block selection, then run causal block-sparse attention over it."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .config import PrismConfig
from .kernels import ops as kernel_ops
from .kernels.blocks import BandIndex, SelectSpec, causal_block_count
from .selection import estimate_from_recipe, recipe
from .spectral import RopeSpec, SpectralBands
from .stats import PrismRunStats, PrismStats

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128, 256)


def _takes(q, k, v) -> bool:
    """True if the kernels take q, k, v as they are: check_qkv's rules as one expression, for the common case of
    inputs that pass (a prefill checks every layer); False sends check_qkv to name the problem."""
    try:
        qs, ks, dtype = q.shape, k.shape, q.dtype
        return (len(qs) == 4 and len(ks) == 4 and ks == v.shape and dtype == k.dtype == v.dtype
                and dtype in SUPPORTED_DTYPES and qs[0] == ks[0] and qs[3] == ks[3] and qs[3] in SUPPORTED_HEAD_DIMS
                and ks[1] > 0 and qs[1] % ks[1] == 0 and qs[2] <= ks[2] and q.device == k.device == v.device
                and isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor))
    except (AttributeError, TypeError):
        return False


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError naming the problem for inputs the kernels cannot take."""
    if _takes(q, k, v):
        return
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
    if k.shape[1] == 0 or hq % k.shape[1]:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({k.shape[1]})")
    if q_len > k.shape[2]:
        raise ValueError(f"q_len ({q_len}) exceeds kv_len ({k.shape[2]}): queries must be the last kv positions")


def dense_attention(q, k, v, scale: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense SDPA, causal with the queries aligned to the end of the keys, or under `mask` when given
    (a transformers mask [B, 1|H, q, >=kv], bool or additive). GQA without repeating K/V unless masked."""
    q_len, kv_len = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if mask is not None:
        if gqa:  # SDPA's fused kernels take GQA only without a mask; expand as transformers does
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[..., :kv_len], scale=scale)
    if q_len == kv_len or q_len == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q_len > 1, scale=scale, enable_gqa=gqa)
    qpos = torch.arange(q_len, device=q.device)[:, None] + (kv_len - q_len)
    causal = torch.arange(kv_len, device=q.device)[None, :] <= qpos
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=scale, enable_gqa=gqa)


def fallback_reason(config: PrismConfig, q_len: int, kv_len: int, attention_mask: torch.Tensor | None = None,
                    sliding_window: int | None = None, dropout: float = 0.0) -> str:
    """Why a call must run dense before any selection is made ("" when Prism may run). The one place
    this is decided, for prism_attention and the transformers entry alike."""
    if q_len == 1:
        return "decoding"
    if kv_len < config.min_sparse_len:
        return "shorter than min_sparse_len"
    if sliding_window is not None:
        return "sliding-window layer"
    if dropout > 0.0:
        return "attention dropout (training)"
    if attention_mask is not None and not _is_aligned_causal(attention_mask, q_len, kv_len):
        return "padding or static-cache mask"
    return ""


DENSE_ROWS = "text after the video (dense rows)"  # the reason recorded for a chunk run under models.dense_rows


class PrismFallbackWarning(UserWarning):
    """Prism ran dense SDPA instead of sparse attention (issued once per reason and process)."""


# What a user can change when Prism falls back to dense, per reason (decoding is expected and stays silent).
FALLBACK_FIXES = {
    "shorter than min_sparse_len": "prompts (keys) shorter than PrismConfig.min_sparse_len run dense; lower "
                                   "min_sparse_len to run Prism on them",
    "selection denser than max_density": "the selection kept more than PrismConfig.max_density of the causal blocks, "
                                         "where dense SDPA is faster; raise max_density (1.0 never falls back) or "
                                         "lower the thresholds",
    "sliding-window layer": "sliding-window layers always run dense",
    "attention dropout (training)": "attention dropout (training mode) runs dense; call model.eval()",
    "padding or static-cache mask": "padded batches and static caches run dense; use batch size 1 without padding "
                                    "and the default dynamic cache",
}
_warned: set[str] = set()


def _warn_fallback(reason: str, q_len: int, kv_len: int) -> None:
    """Tell the user once per reason (and process) that Prism ran dense, and which knob changes that."""
    if reason in _warned or reason not in FALLBACK_FIXES:
        return
    _warned.add(reason)
    warnings.warn(f"prism_mm ran dense attention ({reason}, {q_len} query tokens over {kv_len} keys): "
                  f"{FALLBACK_FIXES[reason]}. "
                  "Shown once; model.prism_stats / return_stats=True record every call.",
                  PrismFallbackWarning, stacklevel=3)


def _attend(q, k, v, config: PrismConfig, spec: SelectSpec | None, index: BandIndex | None, scale: float, ops,
            reason: str, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, PrismStats]:
    """Selection (spec and index: config's recipe for q; None when `reason` is set) + sparse attention, or the one dense
    path when `reason` (or a too dense selection) says so. Returns the output in transformers' memory layout [B, Lq, Hq, D]
    (contiguous when sparse) and its PrismStats."""
    b, hq, q_len, d = q.shape
    selection = None
    if not reason:
        selection = estimate_from_recipe(q, k, spec, index, ops)
        # a host read of the density, only where max_density can send the call to dense
        if config.max_density < 1.0 and float(selection.density().mean()) > config.max_density:
            reason = "selection denser than max_density"
    if reason:
        _warn_fallback(reason, q_len, k.shape[2])
        out = dense_attention(q, k, v, scale, mask).transpose(1, 2)
        ones = torch.ones(b, hq, device=q.device)
        return out, PrismStats.ran_dense(ones, q_len, k.shape[2], reason,
                                         causal_block_count(q_len, k.shape[2], config.block_size), selection)
    out = torch.empty(b, q_len, hq, d, device=q.device, dtype=q.dtype)
    ops.block_sparse_attention(q, k, v, selection, scale, out.transpose(1, 2))
    return out, PrismStats.of_selection(selection)


def dense_rel_err(out: torch.Tensor, q, k, v, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """||out - dense|| / ||dense|| in fp32 (a device scalar): how far the sparse output is from dense attention."""
    ref = dense_attention(q, k, v, scale, mask).float()
    return (out.float() - ref).norm() / ref.norm().clamp_min(1e-30)


def _bands_for(config: PrismConfig, head_dim: int, bands: SpectralBands | None, rope: RopeSpec | None) -> SpectralBands:
    if bands is not None:
        return bands
    rope = rope or RopeSpec(head_dim=head_dim)
    if rope.head_dim != head_dim:
        raise ValueError(f"rope.head_dim={rope.head_dim} does not match the inputs' head_dim={head_dim}")
    return rope.bands(*config.band_dims(head_dim))


def prism_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: PrismConfig | None = None,
    *,
    bands: SpectralBands | None = None,
    rope: RopeSpec | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_stats: bool = False,
):
    """Prism causal attention. q [B, Hq, Lq, D] (after RoPE), k/v [B, Hkv, Lk, D], Lq <= Lk.

    The band dims come from `bands`, else from `rope` (the model's rotary embedding), else from plain
    RoPE over all of head_dim. Key lengths under config.min_sparse_len run dense SDPA.
    Returns the output [B, Hq, Lq, D] (a view of a [B, Lq, Hq, D] buffer when sparse), and
    a PrismStats when return_stats.
    """
    config = config or PrismConfig()
    check_qkv(q, k, v)
    ops = kernel_ops(backend, q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    bands = _bands_for(config, q.shape[-1], bands, rope)
    reason = fallback_reason(config, q.shape[2], k.shape[2])
    spec, index = recipe(q, config, bands) if not reason else (None, None)
    out, stats = _attend(q, k, v, config, spec, index, scale, ops, reason)
    out = out.transpose(1, 2)
    return (out, stats) if return_stats else out


# --------------------------------------------------------------------------------------------
# transformers integration: the "prism" entry of AttentionInterface
# --------------------------------------------------------------------------------------------
ATTN_NAME = "prism"


@dataclass
class PrismLayer:
    """Prism settings of one decoder attention module (set by prism_mm.enable_prism)."""

    config: PrismConfig
    bands: SpectralBands
    stats: PrismRunStats
    backend: str = "auto"
    dense_rows: bool = False  # every query row attends to every earlier key (prism_mm.models.dense_rows)

    def __post_init__(self) -> None:
        self._kept: tuple | None = None  # what prepared() resolved, and for which config, bands, backend, q

    def __getstate__(self) -> dict:  # the kept ops are functions of this process: pickles and copies resolve again
        return {**self.__dict__, "_kept": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({**state, "_kept": None})

    def prepared(self, q: torch.Tensor) -> tuple[SimpleNamespace, SelectSpec, BandIndex]:
        """The ops, SelectSpec and band index for q's head_dim and device. Resolved on the first call and kept while
        config, bands and backend are the objects they were (assigning a new config re-resolves) and q's head_dim and
        device stay: a prefill asks once per layer and forward, and looks nothing up by hashing the config."""
        head_dim, device = q.shape[-1], q.device
        kept = self._kept
        if (kept is not None and kept[0] is self.config and kept[1] is self.bands and kept[2] == self.backend
                and kept[3] == head_dim and kept[4] == device):
            return kept[5]
        ops = kernel_ops(self.backend, device)
        found = (ops, *recipe(q, self.config, self.bands))
        self._kept = (self.config, self.bands, self.backend, head_dim, device, found)
        return found


def compile_lengths(layer: PrismLayer, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device,
                    shapes: list[tuple[int, int]]) -> None:
    """Run the layer's Prism path (selection + sparse kernel) once at each (q_len, kv_len) of `shapes` on random
    inputs laid out as transformers hands them over. Triton compiles a launch variant per constexpr choice (the
    selection's ladder widths, picked by length) and per integer specialisation (a length divisible by 16 or not), so
    a prefill at these lengths afterwards waits for no compile."""
    gen = torch.Generator(device=device).manual_seed(0)
    probe = torch.empty(1, q_heads, 1, head_dim, device=device, dtype=dtype)
    ops, spec, index = layer.prepared(probe)
    for q_len, kv_len in shapes:
        q = torch.randn(1, q_len, q_heads, head_dim, device=device, dtype=dtype, generator=gen).transpose(1, 2)
        k, v = (torch.randn(1, kv_heads, kv_len, head_dim, device=device, dtype=dtype, generator=gen) for _ in "kv")
        _attend(q, k, v, layer.config, spec, index, 1.0 / math.sqrt(head_dim), ops, "")


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
    """AttentionInterface function: Prism for long causal prefill, dense SDPA otherwise.

    Receives query [B, Hq, q, D] after (M)RoPE and key/value [B, Hkv, kv, D] after the cache
    update; returns ([B, q, Hq, D], None) like every transformers attention function.
    """
    layer: PrismLayer | None = getattr(module, "prism", None)
    if layer is None:
        raise RuntimeError(
            f"{type(module).__name__} uses attn_implementation='prism' but was not set up by prism_mm: "
            "call prism_mm.enable_prism(model, PrismConfig(...)) or load with prism_mm.load_model(..., attn='prism')"
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else scaling
    if q_len == 1 and module.layer_idx in layer.stats.layers:
        # a decoding step after this layer's prefill: dense SDPA and nothing else (the run keeps the prefill's record,
        # which a decoding step never overwrites), so generating a token costs what transformers' SDPA path does
        return dense_attention(query, key, value, scale, attention_mask).transpose(1, 2), None
    reason = (DENSE_ROWS if layer.dense_rows
              else fallback_reason(layer.config, q_len, kv_len, attention_mask, kwargs.get("sliding_window"), dropout))
    if not reason:
        check_qkv(query, key, value)
    ops, spec, index = layer.prepared(query) if not reason else (None, None, None)  # dense needs no recipe
    out, stats = _attend(query, key, value, layer.config, spec, index, scale, ops, reason, attention_mask)
    if stats.sparse and layer.stats.check_against_dense:
        stats.dense_rel_err = dense_rel_err(out.transpose(1, 2), query, key, value, scale, attention_mask)
    if not layer.stats.keep_selections:
        stats.selection = None
    layer.stats.record(module.layer_idx, stats)
    return out, None


def register_with_transformers() -> None:
    """Register "prism" with transformers' attention and mask interfaces (idempotent).

    The mask function is SDPA's (see prism_mask_function): None for plain causal inputs, and a real mask when there is
    padding, which prism_attention_forward then hands to dense SDPA.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, prism_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, prism_mask_function())


def prism_mask_function():
    """transformers' SDPA mask function, except that an unpadded causal mask is not built at all: prism_attention
    aligns the queries to the end of the keys itself, so a chunk of a chunked prefill (q < kv) needs no
    [q, kv] tensor. Padding (a 2-D attention_mask with zeros), local windows or other mask functions get SDPA's."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    def mask(*args, **kwargs):
        padding = kwargs.get("attention_mask")
        plain = (kwargs.get("mask_function", causal_mask_function) is causal_mask_function
                 and kwargs.get("local_size") is None and kwargs.get("allow_is_causal_skip", True))
        if plain and (padding is None or (padding.dim() == 2 and bool(padding.all()))):
            return None
        return sdpa_mask(*args, **kwargs)

    return mask
