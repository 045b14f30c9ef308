"""Triton kernel: mean-pool each block of tokens and split the pooled vector into the two RoPE bands.

Per block it writes the pooled high-band and low-band vectors (fp32, band dims in ascending order)
and the energies sum(pooled^2) over all dims / the high band / the low band, which the selection
kernel turns into the calibration temperatures. One read of Q (or K), nothing else.
Twin: torch_ops.pool_bands.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import BandIndex, Pooled


@triton.jit
def _pool_bands_kernel(
    X, HI, LO, E, HI_POS, LO_POS, L, n_blocks, H,
    stride_xb, stride_xh, stride_xl, stride_xd,
    D: tl.constexpr, D_P2: tl.constexpr, DH: tl.constexpr, DL: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start = pid_n * BLOCK
    offs_d = tl.arange(0, D_P2)
    base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    acc = tl.zeros([D_P2], dtype=tl.float32)
    for c in tl.static_range(BLOCK // CHUNK):
        offs = start + c * CHUNK + tl.arange(0, CHUNK)
        ptrs = base + offs[:, None].to(tl.int64) * stride_xl + offs_d[None, :] * stride_xd
        x = tl.load(ptrs, mask=(offs < L)[:, None] & (offs_d < D)[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    pooled = acc / tl.minimum(L - start, BLOCK).to(tl.float32)
    row = pid_bh.to(tl.int64) * n_blocks + pid_n
    hi_pos = tl.load(HI_POS + offs_d, mask=offs_d < D, other=-1)
    lo_pos = tl.load(LO_POS + offs_d, mask=offs_d < D, other=-1)
    tl.store(HI + row * DH + hi_pos, pooled, mask=hi_pos >= 0)
    tl.store(LO + row * DL + lo_pos, pooled, mask=lo_pos >= 0)
    sq = pooled * pooled
    tl.store(E + row * 3 + 0, tl.sum(sq, axis=0))
    tl.store(E + row * 3 + 1, tl.sum(tl.where(hi_pos >= 0, sq, 0.0), axis=0))
    tl.store(E + row * 3 + 2, tl.sum(tl.where(lo_pos >= 0, sq, 0.0), axis=0))


def pool_bands(x: torch.Tensor, block_size: int, bands: BandIndex) -> Pooled:
    """Block-mean-pool x [B, H, L, D] and split it into the two bands, with per-block energies (layout.Pooled)."""
    if x.dim() != 4:
        raise ValueError(f"pool_bands expects [batch, heads, tokens, head_dim], got shape {tuple(x.shape)}")
    b, h, n, d = x.shape
    if bands.head_dim != d:
        raise ValueError(f"bands were built for head_dim {bands.head_dim}, x has head_dim {d}")
    hi_pos, lo_pos, dh, dl = bands.high_pos, bands.low_pos, bands.high_idx.numel(), bands.low_idx.numel()
    nb = triton.cdiv(n, block_size)
    hi = torch.empty(b, h, nb, dh, device=x.device, dtype=torch.float32)
    lo = torch.empty(b, h, nb, dl, device=x.device, dtype=torch.float32)
    energy = torch.empty(b, h, nb, 3, device=x.device, dtype=torch.float32)
    d_p2 = triton.next_power_of_2(d)
    chunk = min(block_size, max(16, 16384 // d_p2))  # <= 16K elements per load
    _pool_bands_kernel[(nb, b * h)](
        x, hi, lo, energy, hi_pos, lo_pos, n, nb, h, *x.stride(),
        D=d, D_P2=d_p2, DH=dh, DL=dl, BLOCK=block_size, CHUNK=chunk, num_warps=8 if chunk * d_p2 >= 8192 else 4,
    )
    return Pooled(hi, lo, energy)
