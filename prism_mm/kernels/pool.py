"""Triton kernel: mean-pool each block of tokens and split the pooled vector into the two RoPE bands.

Per block it writes the pooled high-band and low-band vectors (fp32, band dims in ascending order)
and the energies sum(pooled^2) over all dims / the high band / the low band, which the selection
kernel turns into the calibration temperatures. One read of Q (or K), nothing else; pool_pair pools Q and K in one launch.
Twin: torch_ops.pool_bands.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import BandIndex, Pooled, next_pow2, num_blocks


@triton.jit
def _pool_rows(
    X, HI, LO, E, HI_POS, LO_POS, pid, L, n_blocks, H, stride_xb, stride_xh, stride_xl, stride_xd,
    D: tl.constexpr, D_P2: tl.constexpr, DH: tl.constexpr, DL: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    """Block pid % n_blocks of (batch, head) pid // n_blocks: its pooled band vectors and energies (output row pid)."""
    pid_bh = pid // n_blocks
    start = (pid % n_blocks) * BLOCK
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, D_P2)
    base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    acc = tl.zeros([D_P2], dtype=tl.float32)
    for c in tl.static_range(BLOCK // CHUNK):
        offs = start + c * CHUNK + tl.arange(0, CHUNK)
        ptrs = base + offs[:, None].to(tl.int64) * stride_xl + offs_d[None, :] * stride_xd
        x = tl.load(ptrs, mask=(offs < L)[:, None] & (offs_d < D)[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    pooled = acc / tl.minimum(L - start, BLOCK).to(tl.float32)
    row = pid.to(tl.int64)
    hi_pos = tl.load(HI_POS + offs_d, mask=offs_d < D, other=-1)
    lo_pos = tl.load(LO_POS + offs_d, mask=offs_d < D, other=-1)
    tl.store(HI + row * DH + hi_pos, pooled, mask=hi_pos >= 0)
    tl.store(LO + row * DL + lo_pos, pooled, mask=lo_pos >= 0)
    sq = pooled * pooled
    tl.store(E + row * 3 + 0, tl.sum(sq, axis=0))
    tl.store(E + row * 3 + 1, tl.sum(tl.where(hi_pos >= 0, sq, 0.0), axis=0))
    tl.store(E + row * 3 + 2, tl.sum(tl.where(lo_pos >= 0, sq, 0.0), axis=0))


@triton.jit
def _pool_bands_kernel(
    X1, X2, OUT, HI_POS, LO_POS, hi1, lo1, e1, hi2, lo2, e2, programs1,
    L1, n_blocks1, H1, s1b, s1h, s1l, s1d, L2, n_blocks2, H2, s2b, s2h, s2l, s2d,
    D: tl.constexpr, D_P2: tl.constexpr, DH: tl.constexpr, DL: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    """One program per block of one of two tensors (Q and K in one launch): the first `programs1` programs pool X1.
    Both tensors' outputs are parts of OUT at element offsets hi1, lo1, e1 (X1) and hi2, lo2, e2 (X2)."""
    pid = tl.program_id(0)
    if pid < programs1:
        _pool_rows(X1, OUT + hi1, OUT + lo1, OUT + e1, HI_POS, LO_POS, pid, L1, n_blocks1, H1, s1b, s1h, s1l, s1d,
                   D, D_P2, DH, DL, BLOCK, CHUNK)
    else:
        _pool_rows(X2, OUT + hi2, OUT + lo2, OUT + e2, HI_POS, LO_POS, pid - programs1, L2, n_blocks2, H2,
                   s2b, s2h, s2l, s2d, D, D_P2, DH, DL, BLOCK, CHUNK)


def _check(x: torch.Tensor, bands: BandIndex) -> None:
    if x.dim() != 4:
        raise ValueError(f"pool_bands expects [batch, heads, tokens, head_dim], got shape {tuple(x.shape)}")
    if bands.head_dim != x.shape[-1]:
        raise ValueError(f"bands were built for head_dim {bands.head_dim}, x has head_dim {x.shape[-1]}")


PART_ALIGN = 32  # elements (128 bytes): every part of the pooled buffer starts aligned, as its own allocation would


def _outputs(xs, block_size: int, dh: int, dl: int) -> list[Pooled]:
    """The Pooled outputs of every x: parts of one fp32 allocation, each contiguous and 128-byte aligned."""
    offsets, shapes, end = [], [], 0
    for x in xs:
        b, h, n, _ = x.shape
        nb = num_blocks(n, block_size)
        shapes.append((b, h, nb, dh, dl))
        parts = []
        for size in (b * h * nb * dh, b * h * nb * dl, b * h * nb * 3):
            parts.append(end)
            end += -(-size // PART_ALIGN) * PART_ALIGN
        offsets.append(tuple(parts))
    buffer = torch.empty(end, device=xs[0].device, dtype=torch.float32)
    return [Pooled.carved(buffer, o, shape) for o, shape in zip(offsets, shapes)]


def _launch(xs, block_size: int, bands: BandIndex) -> list[Pooled]:
    """Pool xs (one or two tensors) in one launch; returns their Pooled outputs."""
    for x in xs:
        _check(x, bands)
    d = xs[0].shape[-1]
    dh, dl = bands.high_idx.numel(), bands.low_idx.numel()
    outs = _outputs(xs, block_size, dh, dl)
    (x1, p1), (x2, p2) = (xs[0], outs[0]), (xs[-1], outs[-1])
    programs = [x.shape[0] * x.shape[1] * num_blocks(x.shape[2], block_size) for x in xs]
    d_p2 = next_pow2(d)
    chunk = min(block_size, max(16, 16384 // d_p2))  # <= 16K elements per load
    _pool_bands_kernel[(sum(programs),)](
        x1, x2, p1.buffer, bands.high_pos, bands.low_pos, *p1.offsets, *p2.offsets, programs[0],
        x1.shape[2], p1.shape[2], x1.shape[1], *x1.stride(), x2.shape[2], p2.shape[2], x2.shape[1], *x2.stride(),
        D=d, D_P2=d_p2, DH=dh, DL=dl, BLOCK=block_size, CHUNK=chunk, num_warps=8 if chunk * d_p2 >= 8192 else 4,
    )
    return outs


def pool_bands(x: torch.Tensor, block_size: int, bands: BandIndex) -> Pooled:
    """Block-mean-pool x [B, H, L, D] and split it into the two bands, with per-block energies (blocks.Pooled)."""
    return _launch([x], block_size, bands)[0]


def pool_pair(q: torch.Tensor, k: torch.Tensor, block_size: int, bands: BandIndex) -> tuple[Pooled, Pooled]:
    """pool_bands of q and of k (same head_dim, any heads and lengths) in one launch."""
    if q.shape[-1] != k.shape[-1] or q.device != k.device:
        raise ValueError(f"pool_pair needs q and k with one head_dim and device, got {tuple(q.shape)} on {q.device} "
                         f"and {tuple(k.shape)} on {k.device}")
    pq, pk = _launch([q, k], block_size, bands)
    return pq, pk
