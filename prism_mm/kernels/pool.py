"""Triton kernel: mean-pool each block of tokens (fp32 result). Twin: reference.pool_blocks."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pool_kernel(
    X, OUT, L, n_blocks, H,
    stride_xb, stride_xh, stride_xl, stride_xd,
    D: tl.constexpr, D_P2: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
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
    count = tl.minimum(L - start, BLOCK).to(tl.float32)
    out = OUT + (pid_bh.to(tl.int64) * n_blocks + pid_n) * D + offs_d
    tl.store(out, acc / count, mask=offs_d < D)


def pool_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, H, L, D] -> [B, H, ceil(L / block_size), D] float32 block means."""
    if x.dim() != 4:
        raise ValueError(f"pool_blocks expects [batch, heads, tokens, head_dim], got shape {tuple(x.shape)}")
    b, h, n, d = x.shape
    nb = triton.cdiv(n, block_size)
    out = torch.empty(b, h, nb, d, device=x.device, dtype=torch.float32)
    chunk = min(block_size, 32)
    _pool_kernel[(nb, b * h)](
        x, out, n, nb, h, *x.stride(),
        D=d, D_P2=triton.next_power_of_2(d), BLOCK=block_size, CHUNK=chunk, num_warps=4,
    )
    return out
