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


@functools.lru_cache(maxsize=256)
def _config_spec(config: PrismConfig, head_dim: int, **overrides) -> SelectSpec:
    fields = dict(head_dim=head_dim, block_size=config.block_size, threshold_high=config.threshold_high,
                  threshold_low=config.threshold_low, calibrate=config.calibrate, force_sink=config.force_sink,
                  force_diagonal=config.force_diagonal, dense_tail=config.dense_tail)
    return SelectSpec(**{**fields, **overrides})


def _spec(q: torch.Tensor, config: PrismConfig, **overrides) -> SelectSpec:
    """The SelectSpec of `config` at q's head_dim (built once per config, head_dim and overrides)."""
    return _config_spec(config, q.shape[-1], **overrides)


def _select(q, k, spec: SelectSpec, bands: BandIndex, ops) -> BlockSelection:
    pooled_q, pooled_k = ops.pool_pair(q, k, spec.block_size, bands)
    return ops.select_blocks(pooled_q, pooled_k, spec, q.shape[2], k.shape[2])


def _prism(q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: BandIndex, ops) -> BlockSelection:
    """The paper's selection: pool Q and K into band vectors + energies, then calibrated dual-band top-p per row."""
    return _select(q, k, _spec(q, config), bands, ops)


def _cutoff(q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: BandIndex, ops) -> BlockSelection:
    """Prism's two calibrated band probabilities, averaged; one cutoff for every head and row (config.cutoff)."""
    return _select(q, k, _spec(q, config, cutoff=config.cutoff), bands, ops)


def _meanpool(q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: BandIndex, ops) -> BlockSelection:
    """The baseline Prism improves on: mean-pooled Q . K over all dims, no calibration, top-p per row
    (threshold_high). Both "bands" are every dim, so the union of the two top-p sets is one set."""
    d = q.shape[-1]
    every_dim = band_index(SpectralBands(high=tuple(range(d)), low=tuple(range(d))), d, q.device)
    spec = _spec(q, config, calibrate=False, threshold_low=config.threshold_high)
    return _select(q, k, spec, every_dim, ops)


METHODS = {"prism": _prism, "cutoff": _cutoff, "meanpool": _meanpool}


def estimate(q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: SpectralBands,
             backend: str | SimpleNamespace = "auto") -> BlockSelection:
    """Select key blocks for every (batch, query head, query block). q [B,Hq,Lq,D], k [B,Hkv,Lk,D] after RoPE.

    `backend` is "auto" / "triton" / "torch", or an ops set already resolved by prism_mm.kernels.ops.
    """
    ops = kernel_ops(backend, q.device) if isinstance(backend, str) else backend
    return METHODS[config.method](q, k, config, band_index(bands, q.shape[-1], q.device), ops)
