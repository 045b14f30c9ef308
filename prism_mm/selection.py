"""Block estimation: which key blocks each (batch, query head, query block) needs.

`estimate` dispatches on PrismConfig.method to a selection method built from the ops layer
(prism_mm.kernels); the backend is resolved once by the caller or here.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from .config import PrismConfig
from .kernels import ops as kernel_ops
from .kernels.layout import BandIndex, BlockSelection, SelectSpec
from .spectral import SpectralBands

__all__ = ["BlockSelection", "band_index", "estimate"]


@functools.lru_cache(maxsize=64)
def band_index(bands: SpectralBands, head_dim: int, device: torch.device) -> BandIndex:
    """The bands as device tensors, cached per (bands, head_dim, device)."""
    return BandIndex.build(bands.high, bands.low, head_dim, device)


def _prism(q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: BandIndex, ops) -> BlockSelection:
    """The paper's selection: pool Q and K into band vectors + energies, then calibrated dual-band top-p."""
    bs = config.block_size
    spec = SelectSpec(head_dim=q.shape[-1], block_size=bs, threshold_high=config.threshold_high,
                      threshold_low=config.threshold_low, calibrate=config.calibrate, force_sink=config.force_sink,
                      force_diagonal=config.force_diagonal)
    return ops.select_blocks(ops.pool_bands(q, bs, bands), ops.pool_bands(k, bs, bands), spec, q.shape[2], k.shape[2])


METHODS = {"prism": _prism}


def estimate(q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: SpectralBands,
             backend: str | SimpleNamespace = "auto") -> BlockSelection:
    """Select key blocks for every (batch, query head, query block). q [B,Hq,Lq,D], k [B,Hkv,Lk,D] after RoPE.

    `backend` is "auto" / "triton" / "torch", or an ops set already resolved by prism_mm.kernels.ops.
    """
    ops = kernel_ops(backend, q.device) if isinstance(backend, str) else backend
    return METHODS[config.method](q, k, config, band_index(bands, q.shape[-1], q.device), ops)
