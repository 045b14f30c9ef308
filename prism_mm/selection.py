"""Block estimation: which key blocks each (batch, query head, query block) needs.

`estimate` is the entry point: it dispatches on PrismConfig.method to a recipe (the SelectSpec and band index the
ops take) and runs it on the ops layer (prism_mm.kernels: pool_pair, then the select_blocks kernel);
`estimate_from_recipe` is the same with the recipe and the ops already resolved (the attention path's form).
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from .config import PrismConfig
from .kernels import ops as kernel_ops
from .kernels.blocks import BandIndex, BlockSelection, SelectSpec
from .spectral import SpectralBands

__all__ = ["BlockSelection", "band_index", "estimate", "estimate_from_recipe", "recipe"]


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


def _prism(config: PrismConfig, head_dim: int, bands: SpectralBands, device) -> tuple[SelectSpec, BandIndex]:
    """The paper's selection: pool Q and K into band vectors + energies, then calibrated dual-band top-p per row."""
    return _config_spec(config, head_dim), band_index(bands, head_dim, device)


def _cutoff(config: PrismConfig, head_dim: int, bands: SpectralBands, device) -> tuple[SelectSpec, BandIndex]:
    """Prism's two calibrated band probabilities, averaged; one cutoff for every head and row (config.cutoff)."""
    return _config_spec(config, head_dim, cutoff=config.cutoff), band_index(bands, head_dim, device)


def _meanpool(config: PrismConfig, head_dim: int, bands: SpectralBands, device) -> tuple[SelectSpec, BandIndex]:
    """The baseline Prism improves on: mean-pooled Q . K over all dims, no calibration, top-p per row
    (threshold_high). Both "bands" are every dim, so the union of the two top-p sets is one set."""
    every_dim = band_index(SpectralBands(high=tuple(range(head_dim)), low=tuple(range(head_dim))), head_dim, device)
    return _config_spec(config, head_dim, calibrate=False, threshold_low=config.threshold_high), every_dim


METHODS = {"prism": _prism, "cutoff": _cutoff, "meanpool": _meanpool}


@functools.lru_cache(maxsize=256)
def _recipe(config: PrismConfig, head_dim: int, bands: SpectralBands, device: torch.device):
    return METHODS[config.method](config, head_dim, bands, device)


def recipe(q: torch.Tensor, config: PrismConfig, bands: SpectralBands) -> tuple[SelectSpec, BandIndex]:
    """What the ops need to select for q's head_dim and device under config.method: the SelectSpec and the band
    index (made once per config, bands, head_dim and device)."""
    return _recipe(config, q.shape[-1], bands, q.device)


def estimate(q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: SpectralBands,
             backend: str | SimpleNamespace = "auto") -> BlockSelection:
    """Select key blocks for every (batch, query head, query block). q [B,Hq,Lq,D], k [B,Hkv,Lk,D] after RoPE.

    `backend` is "auto" / "triton" / "torch", or an ops set already resolved by prism_mm.kernels.ops.
    """
    ops = kernel_ops(backend, q.device) if isinstance(backend, str) else backend
    return estimate_from_recipe(q, k, *recipe(q, config, bands), ops)


def estimate_from_recipe(q: torch.Tensor, k: torch.Tensor, spec: SelectSpec, index: BandIndex,
                         ops: SimpleNamespace) -> BlockSelection:
    """estimate with the recipe already made (the SelectSpec and band index) and the ops resolved."""
    pooled_q, pooled_k = ops.pool_pair(q, k, spec.block_size, index)
    return ops.select_blocks(pooled_q, pooled_k, spec, q.shape[2], k.shape[2])
