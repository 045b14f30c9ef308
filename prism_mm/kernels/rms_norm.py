"""Triton kernel: RMSNorm over the last dim in one read and one write (transformers' Qwen RMSNorm, fused).

transformers' RMSNorm modules run it as about seven elementwise kernels over an fp32 copy of the input (cast, square,
mean, rsqrt, scale, cast back, weight): at a hundred thousand vision patches or text tokens that is ~10 bytes of
memory traffic per input byte, in every layer. This kernel reads each row once, keeps it in fp32 registers and
rounds as transformers does: the normalised row to the input's dtype, then the product with the weight to the
promoted dtype of weight and input. Twin: torch_ops.rms_norm.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import next_pow2


@triton.jit
def _rms_norm_kernel(X, W, Y, n_rows, n_cols, stride_x, stride_y, eps,
                     BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """Rows pid * ROWS + [0, ROWS) of X [n_rows, n_cols] (unit column stride) into Y."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=mask, other=0.0)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / n_cols + eps)
    normed = (xf * rstd[:, None]).to(x.dtype)  # transformers rounds to the input dtype before the weight
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0)
    y = w.to(tl.float32)[None, :] * normed.to(tl.float32)
    tl.store(Y + rows[:, None].to(tl.int64) * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


MAX_COLS = 16384  # one row in registers


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) over the last dim, rounded as transformers' Qwen RMSNorm (see the module docstring).
    x [..., N] float16 / bfloat16 / float32, weight [N]; returns x's shape in promote_types(weight, x)."""
    if x.dim() == 0 or x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or weight.dtype not in (
            torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"rms_norm takes float16 / bfloat16 / float32 x of at least 1 dim and weight, got x "
                         f"{x.dtype} {tuple(x.shape)} and weight {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"rms_norm: weight on {weight.device}, x on {x.device}: move them to one device")
    n = x.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != n:
        raise ValueError(f"rms_norm: weight must be [{n}] for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    if n > MAX_COLS:
        raise ValueError(f"rms_norm: rows of {n} elements exceed the kernel's {MAX_COLS}; use torch_ops.rms_norm")
    weight = weight if weight.stride(0) == 1 else weight.contiguous()
    rows = x.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
    block = next_pow2(n)
    per_program = max(1, min(64, 4096 // block))  # ~4K elements per program
    n_rows = rows.shape[0]
    if n_rows:
        _rms_norm_kernel[((n_rows + per_program - 1) // per_program,)](
            rows, weight, out, n_rows, n, rows.stride(0), n, float(eps),
            BLOCK=block, ROWS=per_program, num_warps=8 if block >= 4096 else 4,
        )
    return out
