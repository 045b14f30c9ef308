"""Plain-PyTorch twins of every Triton kernel in this package (also the CPU path).

Conventions shared with the kernels:
- Tensors are [batch, heads, tokens, head_dim]; K/V may have fewer heads than Q (GQA, query head h
  reads KV head h // (Hq // Hkv)).
- Queries are the last q_len positions of the kv_len keys: query i sits at absolute position
  kv_len - q_len + i. Key block j covers keys [j*bs, (j+1)*bs); query block i covers queries
  [i*bs, (i+1)*bs). A query attends to keys at positions <= its own.
- A block selection is a compact list per (batch, query head, query block), as FlexAttention's
  BlockMask: kv_num_blocks [B, Hq, NQB] int32 and kv_indices [B, Hq, NQB, NKB] int32 whose first
  kv_num_blocks entries are the selected key blocks in ascending order (the rest is unspecified).
"""
from __future__ import annotations

import math

import torch


def num_blocks(n: int, block_size: int) -> int:
    return (n + block_size - 1) // block_size


def query_block_key_bounds(q_len: int, kv_len: int, block_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block: (first, last) key block holding its own positions ("diagonal" blocks).

    `last` is also the last key block the query block may see causally.
    """
    offset = kv_len - q_len
    i = torch.arange(num_blocks(q_len, block_size), device=device)
    first_pos = offset + i * block_size
    last_pos = torch.clamp(offset + (i + 1) * block_size, max=kv_len) - 1
    return first_pos // block_size, last_pos // block_size


def causal_block_mask(q_len: int, kv_len: int, block_size: int, device=None) -> torch.Tensor:
    """[NQB, NKB] bool: key blocks a query block can see at all."""
    _, last = query_block_key_bounds(q_len, kv_len, block_size, device)
    j = torch.arange(num_blocks(kv_len, block_size), device=device)
    return j[None, :] <= last[:, None]


def pool_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean of each block of `block_size` tokens (the last, partial block over its valid tokens), fp32.

    x: [B, H, L, D] -> [B, H, ceil(L / block_size), D] float32.
    """
    b, h, n, d = x.shape
    nb = num_blocks(n, block_size)
    pad = nb * block_size - n
    xf = torch.nn.functional.pad(x.float(), (0, 0, 0, pad))
    sums = xf.view(b, h, nb, block_size, d).sum(dim=3)
    counts = torch.full((nb,), float(block_size), device=x.device)
    counts[-1] = block_size - pad
    return sums / counts[:, None]


def top_p_mask(probs: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Smallest set of entries per row whose probability mass reaches `threshold`.

    Rule (shared with the Triton kernel): sort a row descending, k = #entries whose exclusive
    cumulative mass is < threshold, tau = the k-th largest probability; keep p >= tau. A threshold
    of 1.0 keeps every valid entry.
    """
    if threshold >= 1.0:
        return valid.clone()
    p = torch.where(valid, probs, torch.zeros_like(probs))
    sorted_p, _ = torch.sort(p, dim=-1, descending=True)
    exclusive = torch.cumsum(sorted_p, dim=-1) - sorted_p
    k = (exclusive < threshold).sum(dim=-1, keepdim=True)
    tau = torch.gather(sorted_p, -1, k - 1)
    return (p >= tau) & valid


def pool_bands(x: torch.Tensor, block_size: int, hi_idx: torch.Tensor, lo_idx: torch.Tensor):
    """Pooled high / low band vectors and per-block energies (twin of kernels.pool.pool_bands).

    Returns (high [B,H,NB,DH], low [B,H,NB,DL], energy [B,H,NB,3]) float32, where energy holds
    sum(pooled^2) over all dims, the high band and the low band.
    """
    pooled = pool_blocks(x, block_size)
    hi, lo = pooled[..., hi_idx], pooled[..., lo_idx]
    energy = torch.stack([pooled.pow(2).sum(-1), hi.pow(2).sum(-1), lo.pow(2).sum(-1)], dim=-1)
    return hi.contiguous(), lo.contiguous(), energy


def band_temperature(q_energy, k_energy, band: int, d_band: int, head_dim: int, group: int) -> torch.Tensor:
    """[B, Hq] energy-calibrated temperature of a band (band 1 = high, 2 = low):

    t = sqrt(d_band / d) * (rms(q_band) / rms(q)) * (rms(k_band) / rms(k)), RMS over all blocks of a head.
    """
    def ratio(e):
        n = e.shape[-2]
        rms_all = (e[..., 0].sum(-1) / (n * head_dim)).sqrt()
        rms_band = (e[..., band].sum(-1) / (n * d_band)).sqrt()
        return rms_band / rms_all.clamp_min(1e-6)

    t = math.sqrt(d_band / head_dim) * ratio(q_energy) * ratio(k_energy).repeat_interleave(group, dim=1)
    return t.clamp_min(1e-6)


def select_blocks(
    q_high: torch.Tensor,
    k_high: torch.Tensor,
    q_low: torch.Tensor,
    k_low: torch.Tensor,
    q_energy: torch.Tensor,
    k_energy: torch.Tensor,
    head_dim: int,
    threshold_high: float,
    threshold_low: float,
    q_len: int,
    kv_len: int,
    block_size: int,
    calibrate: bool = True,
    force_sink: bool = True,
    force_diagonal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual-band top-p block selection from pooled band vectors (twin of kernels.estimate).

    Band logits are q_band . k_band / (sqrt(d_band) * t_band) with t_band = band_temperature()
    when calibrate, else 1; causal softmax per row; per-band top_p_mask; union; sink + diagonal.
    q_*: [B, Hq, NQB, D_band], k_*: [B, Hkv, NKB, D_band], energies [B, H, blocks, 3], float32.
    Returns (kv_num_blocks, kv_indices).
    """
    group = q_high.shape[1] // k_high.shape[1]
    valid = causal_block_mask(q_len, kv_len, block_size, q_high.device)[None, None]
    mask = torch.zeros(valid.shape, dtype=torch.bool, device=q_high.device)
    bands = ((q_high, k_high, threshold_high, 1), (q_low, k_low, threshold_low, 2))
    for qb, kb, thr, band in bands:
        d_band = qb.shape[-1]
        scale = torch.full(qb.shape[:2], 1.0 / math.sqrt(d_band), device=qb.device)
        if calibrate:
            scale = scale / band_temperature(q_energy, k_energy, band, d_band, head_dim, group)
        logits = (qb @ kb.repeat_interleave(group, dim=1).transpose(-1, -2)) * scale[..., None, None]
        probs = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
        mask = mask | top_p_mask(probs, valid.expand_as(probs), thr)
    mask = mask & valid
    if force_sink:
        mask[..., 0] = True
    if force_diagonal:
        first, last = query_block_key_bounds(q_len, kv_len, block_size, q_high.device)
        rows = torch.arange(first.numel(), device=q_high.device)
        mask[..., rows, first] = True
        mask[..., rows, last] = True
    return indices_from_block_mask(mask)


def random_selection(b: int, hq: int, q_len: int, kv_len: int, block_size: int, density: float, device=None,
                     generator: torch.Generator | None = None, diagonal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A random causal block selection (for tests and benchmarks): each visible key block with probability
    `density`, plus (diagonal=True) the first and last key blocks holding each query block's own positions.
    Returns (kv_num_blocks, kv_indices)."""
    valid = causal_block_mask(q_len, kv_len, block_size, device)
    mask = (torch.rand(b, hq, *valid.shape, device=device, generator=generator) < density) & valid
    if diagonal:
        first, last = query_block_key_bounds(q_len, kv_len, block_size, device)
        rows = torch.arange(first.numel(), device=device)
        mask[..., rows, first] = True
        mask[..., rows, last] = True
    return indices_from_block_mask(mask)


def indices_from_block_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, H, NQB, NKB] bool -> (kv_num_blocks int32, kv_indices int32 ascending, padded with -1)."""
    nkb = mask.shape[-1]
    counts = mask.sum(dim=-1, dtype=torch.int32)
    j = torch.arange(nkb, device=mask.device, dtype=torch.int32).expand(mask.shape)
    # Selected indices first (stable sort keeps ascending order), unselected ones after.
    keys = torch.where(mask, j, j + nkb)
    indices = torch.sort(keys, dim=-1, stable=True).values
    indices = torch.where(indices < nkb, indices, torch.full_like(indices, -1))
    return counts, indices.to(torch.int32)


def block_mask_from_indices(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, num_key_blocks: int) -> torch.Tensor:
    """Inverse of indices_from_block_mask: [B, H, NQB, NKB] bool."""
    pos = torch.arange(kv_indices.shape[-1], device=kv_indices.device)
    used = pos < kv_num_blocks[..., None].long()
    # Unused entries scatter into a spare column that is dropped afterwards.
    idx = torch.where(used, kv_indices.long(), torch.full_like(kv_indices, num_key_blocks, dtype=torch.long))
    mask = torch.zeros(*kv_indices.shape[:-1], num_key_blocks + 1, dtype=torch.bool, device=kv_indices.device)
    mask.scatter_(-1, idx, True)
    return mask[..., :num_key_blocks]


def token_mask(kv_num_blocks, kv_indices, q_len: int, kv_len: int, block_size: int) -> torch.Tensor:
    """[B, H, q_len, kv_len] bool: selected blocks expanded to tokens, intersected with causality."""
    nkb = num_blocks(kv_len, block_size)
    blocks = block_mask_from_indices(kv_num_blocks, kv_indices, nkb)
    tokens = blocks.repeat_interleave(block_size, dim=-2)[..., :q_len, :]
    tokens = tokens.repeat_interleave(block_size, dim=-1)[..., :kv_len]
    offset = kv_len - q_len
    qpos = torch.arange(q_len, device=blocks.device)[:, None] + offset
    kpos = torch.arange(kv_len, device=blocks.device)[None, :]
    return tokens & (kpos <= qpos)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention restricted to the selected key blocks (twin of kernels.block_sparse).

    Computed in float32 and returned in q's dtype. Query rows that see no key return zeros.
    """
    b, hq, q_len, d = q.shape
    hkv, kv_len = k.shape[1], k.shape[2]
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    allowed = token_mask(kv_num_blocks, kv_indices, q_len, kv_len, block_size)
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = (q.float() @ kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no visible key
    return (probs @ vf).to(q.dtype)


def dense_causal_attention(q, k, v, scale: float | None = None) -> torch.Tensor:
    """Dense causal attention in float32 with the same query/key alignment (for tests)."""
    b, hq, q_len, d = q.shape
    kv_len = k.shape[2]
    nkb = num_blocks(kv_len, 16)
    nqb = num_blocks(q_len, 16)
    full = torch.ones(b, hq, nqb, nkb, dtype=torch.bool, device=q.device)
    counts, indices = indices_from_block_mask(full)
    return block_sparse_attention(q, k, v, counts, indices, 16, scale)
