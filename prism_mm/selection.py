"""Block estimation: pool Q/K, score key blocks in two RoPE bands, keep each band's top-p, union.

Dispatch: the Triton kernels on CUDA tensors, the plain-PyTorch twins (prism_mm.kernels.reference)
elsewhere; `backend` forces one ("triton" on CPU needs TRITON_INTERPRET=1).
"""
from __future__ import annotations

import math
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


def band_inputs(
    q_pooled: torch.Tensor, k_pooled: torch.Tensor, bands: SpectralBands, config: PrismConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each band from the pooled vectors and fold its logit scale into the query side.

    logits_band = (q_band . k_band) / (sqrt(d_band) * t_band), with the energy-calibrated
    temperature t_band = sqrt(d_band / d) * (rms(q_band) / rms(q)) * (rms(k_band) / rms(k))
    (RMS over all blocks of a head) when config.calibrate, else t_band = 1.
    """
    d = q_pooled.shape[-1]
    group = q_pooled.shape[1] // k_pooled.shape[1]
    hi_idx, lo_idx = bands.tensors(q_pooled.device)
    eps = 1e-6

    def rms(x):
        return x.pow(2).mean(dim=(-2, -1)).sqrt()  # [B, H]

    out = []
    for idx in (hi_idx, lo_idx):
        qb = q_pooled.index_select(-1, idx)
        kb = k_pooled.index_select(-1, idx).contiguous()
        d_band = idx.numel()
        if config.calibrate:
            ratio_q = rms(qb) / rms(q_pooled).clamp_min(eps)
            ratio_k = (rms(kb) / rms(k_pooled).clamp_min(eps)).repeat_interleave(group, dim=1)
            temp = (math.sqrt(d_band / d) * ratio_q * ratio_k).clamp_min(eps)
        else:
            temp = torch.ones(qb.shape[:2], device=qb.device)
        qb = (qb / (math.sqrt(d_band) * temp)[..., None, None]).contiguous()
        out += [qb, kb]
    return out[0], out[1], out[2], out[3]


def estimate(
    q: torch.Tensor, k: torch.Tensor, config: PrismConfig, bands: SpectralBands, backend: str = "auto"
) -> BlockSelection:
    """Select key blocks for every (batch, query head, query block). q [B,Hq,Lq,D], k [B,Hkv,Lk,D]."""
    backend = resolve_backend(backend, q.device)
    bs = config.block_size
    if backend == "triton":
        from .kernels import estimate as est_kernel
        from .kernels import pool as pool_kernel

        pool, select = pool_kernel.pool_blocks, est_kernel.select_blocks
    else:
        pool, select = ref.pool_blocks, ref.select_blocks
    qh, kh, ql, kl = band_inputs(pool(q, bs), pool(k, bs), bands, config)
    counts, indices = select(
        qh, kh, ql, kl, config.threshold_high, config.threshold_low, q.shape[2], k.shape[2], bs,
        force_sink=config.force_sink, force_diagonal=config.force_diagonal,
    )
    return BlockSelection(counts, indices, bs, q.shape[2], k.shape[2])
