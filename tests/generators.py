"""Test inputs and oracles that are not part of the product: random selections, dense float32 attention."""
from __future__ import annotations

import torch

from prism_mm.kernels import torch_ops
from prism_mm.kernels.blocks import BlockSelection, causal_block_mask, num_blocks, query_block_key_bounds


def random_selection(b: int, hq: int, q_len: int, kv_len: int, block_size: int, density: float, device=None,
                     generator: torch.Generator | None = None, diagonal: bool = True) -> BlockSelection:
    """A random causal block selection: each visible key block with probability `density`, plus
    (diagonal=True) the first and last key blocks holding each query block's own positions."""
    valid = causal_block_mask(q_len, kv_len, block_size, device)
    mask = (torch.rand(b, hq, *valid.shape, device=device, generator=generator) < density) & valid
    if diagonal:
        first, last = query_block_key_bounds(q_len, kv_len, block_size, device)
        rows = torch.arange(first.numel(), device=device)
        mask[..., rows, first] = True
        mask[..., rows, last] = True
    return BlockSelection.from_mask(mask, block_size, q_len, kv_len)


def full_selection(b: int, hq: int, q_len: int, kv_len: int, block_size: int, device=None) -> BlockSelection:
    """Every causally visible key block."""
    valid = causal_block_mask(q_len, kv_len, block_size, device)
    return BlockSelection.from_mask(valid.expand(b, hq, *valid.shape), block_size, q_len, kv_len)


def dense_causal_attention(q, k, v, scale: float | None = None) -> torch.Tensor:
    """Dense causal attention in float32 with queries aligned to the end of the keys (the torch twin over
    every block), independent of SDPA."""
    sel = full_selection(q.shape[0], q.shape[1], q.shape[2], k.shape[2], 16, q.device)
    return torch_ops.block_sparse_attention(q.float(), k.float(), v.float(), sel, scale)


def block_structured(b, h, n, d, bs, dtype=torch.float32, gain=1.0, device=None):
    """Tokens = a random vector per block (+ noise): pooled scores are far from flat."""
    nb = num_blocks(n, bs)
    x = torch.randn(b, h, nb, 1, d, device=device).expand(b, h, nb, bs, d).reshape(b, h, nb * bs, d)[:, :, :n]
    return (gain * x + 0.3 * torch.randn(b, h, n, d, device=device)).to(dtype)
