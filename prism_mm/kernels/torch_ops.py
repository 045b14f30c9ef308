"""Plain-PyTorch twins of the Triton ops (same signatures), used as the CPU path and as the tests' oracle.

pool_bands and pool_pair (twins of pool.py), select_blocks (twin of block_select.py), block_sparse_attention (twin of
block_sparse.py), rms_norm (twin of rms_norm.py, transformers' own formula). Everything is computed in float32. Conventions: blocks.py.
"""
from __future__ import annotations

import math

import torch

from .blocks import (BandIndex, BlockSelection, Pooled, SelectSpec, block_mask_from_indices, causal_block_mask,
                     dense_tail_row, indices_from_block_mask, num_blocks, query_block_key_bounds)

# Scores of at most this many (batch x head x query x key) elements exist at once in block_sparse_attention:
# 2^25 fp32 = 128 MiB per buffer, a few such buffers per query chunk (32K tokens x 14 heads: ~3 GB peak).
ATTENTION_CHUNK_ELEMENTS = 1 << 25


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


def pool_bands(x: torch.Tensor, block_size: int, bands: BandIndex) -> Pooled:
    """Block-mean-pool x [B, H, L, D] and split it into the two bands, with per-block energies."""
    pooled = pool_blocks(x, block_size)
    hi, lo = pooled[..., bands.high_idx], pooled[..., bands.low_idx]
    energy = torch.stack([pooled.pow(2).sum(-1), hi.pow(2).sum(-1), lo.pow(2).sum(-1)], dim=-1)
    return Pooled(hi.contiguous(), lo.contiguous(), energy)


def pool_pair(q: torch.Tensor, k: torch.Tensor, block_size: int, bands: BandIndex) -> tuple[Pooled, Pooled]:
    """pool_bands of q and of k."""
    return pool_bands(q, block_size, bands), pool_bands(k, block_size, bands)


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


def band_probabilities(q: Pooled, k: Pooled, spec: SelectSpec, q_len: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) [B, Hq, NQB, NKB]: each band's causal softmax over key blocks of its scaled pooled logits
    q_band . k_band / (sqrt(d_band) * t_band), t_band the energy temperature when spec.calibrate (0 off causal)."""
    return _band_probabilities(q, k, spec, causal_block_mask(q_len, kv_len, spec.block_size, q.high.device)[None, None])


def _band_probabilities(q: Pooled, k: Pooled, spec: SelectSpec, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """band_probabilities under the causal block mask `valid` [1, 1, NQB, NKB]."""
    group = q.high.shape[1] // k.high.shape[1]
    device = q.high.device
    probs = []
    for qb, kb, band in ((q.high, k.high, 1), (q.low, k.low, 2)):
        d_band = qb.shape[-1]
        scale = torch.full(qb.shape[:2], 1.0 / math.sqrt(d_band), device=device)
        if spec.calibrate:
            scale = scale / band_temperature(q.energy, k.energy, band, d_band, spec.head_dim, group)
        logits = (qb @ kb.repeat_interleave(group, dim=1).transpose(-1, -2)) * scale[..., None, None]
        probs.append(torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1))
    return probs[0], probs[1]


def select_blocks(q: Pooled, k: Pooled, spec: SelectSpec, q_len: int, kv_len: int) -> BlockSelection:
    """Dual-band block selection from pooled Q and K: per-band top-p, or one cutoff on the mean band probability
    (see SelectSpec for the rules)."""
    device = q.high.device
    valid = causal_block_mask(q_len, kv_len, spec.block_size, device)[None, None]
    p_high, p_low = _band_probabilities(q, k, spec, valid)
    if spec.cutoff is None:
        mask = top_p_mask(p_high, valid.expand_as(p_high), spec.threshold_high) | \
            top_p_mask(p_low, valid.expand_as(p_low), spec.threshold_low)
    else:
        mask = 0.5 * p_high + 0.5 * p_low >= spec.cutoff
    mask[..., dense_tail_row(q_len, spec.block_size, spec.dense_tail):, :] = True
    mask = mask & valid
    if spec.force_sink:
        mask[..., 0] = True
    if spec.force_diagonal:
        first, last = query_block_key_bounds(q_len, kv_len, spec.block_size, device)
        rows = torch.arange(first.numel(), device=device)
        mask[..., rows, first] = True
        mask[..., rows, last] = True
    return BlockSelection(*indices_from_block_mask(mask), spec.block_size, q_len, kv_len)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection,
                           scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of q [B, Hq, Lq, D] over the selected key blocks of k/v [B, Hkv, Lk, D].

    Computed in float32 by query chunks (each sees only its causal key range), so memory stays bounded
    by ATTENTION_CHUNK_ELEMENTS scores, not B x H x Lq x Lk. Returns q's dtype, written into `out` (any
    strides) when given. Query rows that see no key return zeros.
    """
    b, hq, q_len, d = q.shape
    hkv, kv_len = k.shape[1], k.shape[2]
    selection.check(b, hq, q_len, kv_len)
    group, bs = hq // hkv, selection.block_size
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q) if out is None else out
    offset = kv_len - q_len
    rows_per_chunk = max(1, ATTENTION_CHUNK_ELEMENTS // (b * hq * bs * max(kv_len, 1)))  # query blocks per chunk
    nqb = num_blocks(q_len, bs)
    for r0 in range(0, nqb, rows_per_chunk):
        r1 = min(nqb, r0 + rows_per_chunk)
        q0, q1 = r0 * bs, min(r1 * bs, q_len)
        keys = offset + q1  # keys this chunk can see causally
        blocks = block_mask_from_indices(selection.kv_num_blocks[:, :, r0:r1], selection.kv_indices[:, :, r0:r1],
                                         selection.num_key_blocks)
        allowed = blocks.repeat_interleave(bs, dim=-2)[..., : q1 - q0, :]
        allowed = allowed.repeat_interleave(bs, dim=-1)[..., :keys]
        qpos = torch.arange(q0, q1, device=q.device)[:, None] + offset
        allowed = allowed & (torch.arange(keys, device=q.device)[None, :] <= qpos)
        qf = q[:, :, q0:q1].float().reshape(b, hkv, group, q1 - q0, d)
        scores = (qf @ k[:, :, None, :keys].float().transpose(-1, -2)) * scale  # [B, Hkv, G, rows, keys]
        scores = scores.masked_fill_(~allowed.view(b, hkv, group, q1 - q0, keys), float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num_(nan=0.0)  # rows with no visible key
        del scores, allowed
        out[:, :, q0:q1] = (probs @ v[:, :, None, :keys].float()).reshape(b, hq, q1 - q0, d).to(out.dtype)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) over the last dim, as transformers' Qwen RMSNorm modules compute it: in fp32, the
    normalised x rounded to x's dtype, then the product with the weight (dtype promote_types(weight, x))."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

