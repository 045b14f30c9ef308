"""The ops layer: five ops, each with a Triton kernel and a plain-PyTorch twin of the same signature.

    pool_bands(x, block_size, bands: BandIndex) -> Pooled
    pool_pair(q, k, block_size, bands: BandIndex) -> (Pooled, Pooled)     (both in one launch)
    select_blocks(q: Pooled, k: Pooled, spec: SelectSpec, q_len, kv_len) -> BlockSelection
    block_sparse_attention(q, k, v, selection: BlockSelection, scale=None, out=None) -> out
    rms_norm(x, weight, eps) -> weight * x / rms(x)                       (transformers' Qwen RMSNorm, fused)

`ops(backend, device)` resolves a backend once and returns the matching set. The block convention and
the types the ops exchange live in blocks.py. This package imports nothing from the rest of prism_mm;
the Triton modules are imported only when the Triton backend is asked for, so the torch path works
where Triton is absent.
"""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

BACKENDS = ("auto", "triton", "torch")
OP_NAMES = ("pool_bands", "pool_pair", "select_blocks", "block_sparse_attention", "rms_norm")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'auto' -> 'triton' on CUDA, 'torch' elsewhere. Validates an explicit choice."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device_type = torch.device(device).type
    if backend == "auto":
        return "triton" if device_type == "cuda" else "torch"
    if backend == "triton" and device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import); "
                         "use backend='torch' on CPU")
    return backend


def ops(backend: str = "auto", device: torch.device | str = "cpu") -> SimpleNamespace:
    """The ops of one backend (resolved for `device`), as attributes; `.name` says which backend."""
    key = (backend, str(device))
    found = _resolved.get(key)
    if found is None:  # resolved once per (backend, device): attention calls this once per layer and forward
        found = _resolved[key] = _ops(resolve_backend(backend, device))
    return found


_resolved: dict[tuple[str, str], SimpleNamespace] = {}


def on_input_device(op, device_of):
    """`op` launched with its input's CUDA device current (Triton launches on the current device, and the
    launchers' buffers land there): a tensor on cuda:1 is computed on cuda:1 even while cuda:0 is current."""

    @functools.wraps(op)
    def run(first, *args, **kwargs):
        device = device_of(first)
        if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
            return op(first, *args, **kwargs)
        with torch.cuda.device(device):
            return op(first, *args, **kwargs)

    return run


@functools.lru_cache(maxsize=None)
def _ops(name: str) -> SimpleNamespace:
    if name == "triton":
        from .block_sparse import block_sparse_attention
        from .block_select import select_blocks
        from .pool import pool_bands, pool_pair
        from .rms_norm import rms_norm

        pool_bands = on_input_device(pool_bands, lambda x: x.device)
        pool_pair = on_input_device(pool_pair, lambda x: x.device)
        select_blocks = on_input_device(select_blocks, lambda pooled: pooled.device)
        block_sparse_attention = on_input_device(block_sparse_attention, lambda q: q.device)
        rms_norm = on_input_device(rms_norm, lambda x: x.device)
    else:
        from .torch_ops import block_sparse_attention, pool_bands, pool_pair, rms_norm, select_blocks
    return SimpleNamespace(name=name, pool_bands=pool_bands, pool_pair=pool_pair, select_blocks=select_blocks,
                           block_sparse_attention=block_sparse_attention, rms_norm=rms_norm)
