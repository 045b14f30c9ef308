"""Block estimation: pool Q/K, score key blocks in two RoPE bands, keep each band's top-p, union.

Dispatch: the Triton kernels on CUDA tensors, the plain-PyTorch twins (prism_mm.kernels.reference)
elsewhere; `backend` forces one ("triton" on CPU needs TRITON_INTERPRET=1).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from .config import PrismConfig
from .kernels import reference as ref
from .spectral import SpectralBands

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA, 'torch' elsewhere. Validates an explicit choice."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import); use backend='torch' on CPU")
    return backend


@dataclass
class BlockSelection:
    """Selected key blocks per (batch, query head, query block), FlexAttention-style compact lists."""

    kv_num_blocks: torch.Tensor  # [B, Hq, NQB] int32
    kv_indices: torch.Tensor  # [B, Hq, NQB, NKB] int32; first kv_num_blocks entries valid, ascending
    block_size: int
    q_len: int
    kv_len: int

    @property
    def num_key_blocks(self) -> int:
        return self.kv_indices.shape[-1]

    def causal_blocks(self) -> int:
        """Number of (query block, key block) pairs a dense causal pass computes."""
        return int(ref.causal_block_mask(self.q_len, self.kv_len, self.block_size).sum())

    def density(self) -> torch.Tensor:
        """[B, Hq] fraction of the causal blocks that were selected."""
        return self.kv_num_blocks.sum(dim=-1).float() / self.causal_blocks()

    def to_mask(self) -> torch.Tensor:
        """[B, Hq, NQB, NKB] bool block mask (for inspection and plots)."""
        return ref.block_mask_from_indices(self.kv_num_blocks, self.kv_indices, self.num_key_blocks)


@functools.lru_cache(maxsize=64)
def _band_tensors(bands: SpectralBands, head_dim: int, device: torch.device):
    """Cached per device: band dim indices (reference path) and in-band positions (kernel path)."""
    hi_idx, lo_idx = bands.tensors(device)
    hi_pos = torch.full((head_dim,), -1, dtype=torch.int32, device=device)
    lo_pos = hi_pos.clone()
    hi_pos[hi_idx] = torch.arange(hi_idx.numel(), dtype=torch.int32, device=device)
    lo_pos[lo_idx] = torch.arange(lo_idx.numel(), dtype=torch.int32, device=device)
    return hi_idx, lo_idx, hi_pos, lo_pos


def estimate(
    q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: SpectralBands, backend: str = "auto"
) -> BlockSelection:
    """Select key blocks for every (batch, query head, query block). q [B,Hq,Lq,D], k [B,Hkv,Lk,D].

    Three steps, each a kernel on the Triton path: pool Q into band vectors + energies, pool K
    likewise, then calibrated dual-band top-p selection into index lists.
    """
    backend = resolve_backend(backend, q.device)
    bs, d = config.block_size, q.shape[-1]
    if max(bands.high + bands.low) >= d:
        raise ValueError(f"band dims {max(bands.high + bands.low)} out of range for head_dim {d}")
    hi_idx, lo_idx, hi_pos, lo_pos = _band_tensors(bands, d, q.device)
    if backend == "triton":
        from .kernels import estimate as est_kernel
        from .kernels import pool as pool_kernel

        dh, dl = len(bands.high), len(bands.low)
        pooled_q = pool_kernel.pool_bands(q, bs, hi_pos, lo_pos, dh, dl)
        pooled_k = pool_kernel.pool_bands(k, bs, hi_pos, lo_pos, dh, dl)
        select = est_kernel.select_blocks
    else:
        pooled_q = ref.pool_bands(q, bs, hi_idx, lo_idx)
        pooled_k = ref.pool_bands(k, bs, hi_idx, lo_idx)
        select = ref.select_blocks
    (qh, ql, qe), (kh, kl, ke) = pooled_q, pooled_k
    counts, indices = select(
        qh, kh, ql, kl, qe, ke, d, config.threshold_high, config.threshold_low, q.shape[2], k.shape[2], bs,
        calibrate=config.calibrate, force_sink=config.force_sink, force_diagonal=config.force_diagonal,
    )
    return BlockSelection(counts, indices, bs, q.shape[2], k.shape[2])
