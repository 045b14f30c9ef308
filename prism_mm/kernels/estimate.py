"""Triton kernel: dual-band top-p block selection -> compact per-row key-block index lists.

One program scores R query-block rows of one (batch, query head) against every key block of its KV
head in both bands, applies a causal softmax and the top-p rule per band, takes the union with the
sink and diagonal blocks, and writes the selected key-block indices (ascending) plus their count.
Nothing of size heads x q_blocks x k_blocks in float32 goes through memory.
Twin: reference.select_blocks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _band_select(
    Qp, Kp, rows, cols, row_ok, valid, n_kblocks, thr,
    D: tl.constexpr, DC: tl.constexpr, R: tl.constexpr, NKB_P2: tl.constexpr, PRECISION: tl.constexpr,
    BISECT: tl.constexpr,
):
    acc = tl.zeros([R, NKB_P2], dtype=tl.float32)
    for d0 in tl.static_range(0, D, DC):
        dd = d0 + tl.arange(0, DC)
        q = tl.load(Qp + rows[:, None] * D + dd[None, :], mask=row_ok[:, None] & (dd < D)[None, :], other=0.0)
        kt = tl.load(Kp + cols[None, :] * D + dd[:, None], mask=(cols < n_kblocks)[None, :] & (dd < D)[:, None], other=0.0)
        acc += tl.dot(q, kt, input_precision=PRECISION)
    logits = tl.where(valid, acc, float("-inf"))
    m = tl.max(logits, axis=1)
    m = tl.where(row_ok, m, 0.0)
    p = tl.where(valid, tl.exp(logits - m[:, None]), 0.0)
    z = tl.sum(p, axis=1)
    p = p / tl.where(z > 0, z, 1.0)[:, None]
    # top-p: tau = k-th largest, k = #entries whose exclusive cumulative mass is below thr;
    # equivalently tau = the largest v with mass(p >= v) >= thr.
    if BISECT:
        # Binary search over the fp32 bit patterns (monotone for p >= 0): 31 steps land exactly on tau.
        bits = p.to(tl.int32, bitcast=True)
        lo = tl.zeros([R], dtype=tl.int32)
        hi = tl.max(bits, axis=1) + 1
        for _ in tl.static_range(31):
            mid = lo + (hi - lo) // 2
            ok = tl.sum(tl.where(bits >= mid[:, None], p, 0.0), axis=1) >= thr
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid)
        keep = (bits >= lo[:, None]) & valid
    else:
        s = tl.sort(p, dim=1, descending=True)
        exclusive = tl.cumsum(s, axis=1) - s
        k = tl.sum((exclusive < thr).to(tl.int32), axis=1)
        tau = tl.sum(tl.where(cols[None, :] == (k - 1)[:, None], s, 0.0), axis=1)
        keep = (p >= tau[:, None]) & valid
    return keep | (valid & (thr >= 1.0))


@triton.jit
def _select_kernel(
    QH, KH, QL, KL, CNT, IDX, thr_high, thr_low,
    n_qblocks, n_kblocks, q_len, kv_len, Hq, Hkv, GROUP,
    DH: tl.constexpr, DL: tl.constexpr, DC: tl.constexpr, R: tl.constexpr, NKB_P2: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, FORCE_SINK: tl.constexpr, FORCE_DIAG: tl.constexpr, PRECISION: tl.constexpr,
    BISECT: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    kvh = b * Hkv + h // GROUP
    rows = pid_r * R + tl.arange(0, R)
    cols = tl.arange(0, NKB_P2)
    row_ok = rows < n_qblocks
    offset = kv_len - q_len
    first_pos = offset + rows * BLOCK_SIZE
    last_pos = tl.minimum(first_pos + BLOCK_SIZE, kv_len) - 1
    diag_lo = first_pos // BLOCK_SIZE
    diag_hi = last_pos // BLOCK_SIZE
    valid = (cols[None, :] <= diag_hi[:, None]) & row_ok[:, None]

    q_row0 = pid_bh.to(tl.int64) * n_qblocks
    k_row0 = kvh.to(tl.int64) * n_kblocks
    sel = _band_select(QH + q_row0 * DH, KH + k_row0 * DH, rows, cols, row_ok, valid, n_kblocks, thr_high,
                       DH, DC, R, NKB_P2, PRECISION, BISECT)
    sel = sel | _band_select(QL + q_row0 * DL, KL + k_row0 * DL, rows, cols, row_ok, valid, n_kblocks, thr_low,
                             DL, DC, R, NKB_P2, PRECISION, BISECT)
    if FORCE_SINK:
        sel = sel | (cols[None, :] == 0)
    if FORCE_DIAG:
        sel = sel | (cols[None, :] == diag_lo[:, None]) | (cols[None, :] == diag_hi[:, None])
    sel = sel & valid
    sel_i = sel.to(tl.int32)
    pos = tl.cumsum(sel_i, axis=1) - 1
    out_rows = (q_row0 + rows).to(tl.int64)
    tl.store(IDX + out_rows[:, None] * n_kblocks + pos, cols[None, :] + 0 * pos, mask=sel)
    tl.store(CNT + out_rows, tl.sum(sel_i, axis=1), mask=row_ok)


def select_blocks(
    q_high: torch.Tensor,
    k_high: torch.Tensor,
    q_low: torch.Tensor,
    k_low: torch.Tensor,
    threshold_high: float,
    threshold_low: float,
    q_len: int,
    kv_len: int,
    block_size: int,
    force_sink: bool = True,
    force_diagonal: bool = True,
    precise: bool = True,
    tiles: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher; same contract as reference.select_blocks. Returns (kv_num_blocks, kv_indices).

    `tiles` overrides the launch configuration (R rows per program, num_warps, BISECT).
    """
    for name, t in (("q_high", q_high), ("k_high", k_high), ("q_low", q_low), ("k_low", k_low)):
        if t.dim() != 4 or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous float32 [B, H, blocks, dims] tensor")
    b, hq, nqb, dh = q_high.shape
    hkv, nkb = k_high.shape[1], k_high.shape[2]
    dl = q_low.shape[-1]
    if hq % hkv or k_low.shape[:3] != k_high.shape[:3] or q_low.shape[:3] != q_high.shape[:3]:
        raise ValueError("band tensors disagree on batch / heads / blocks")
    if nqb != triton.cdiv(q_len, block_size) or nkb != triton.cdiv(kv_len, block_size):
        raise ValueError("pooled tensors do not match q_len / kv_len / block_size")
    counts = torch.empty(b, hq, nqb, device=q_high.device, dtype=torch.int32)
    indices = torch.empty(b, hq, nqb, nkb, device=q_high.device, dtype=torch.int32)
    nkb_p2 = max(16, triton.next_power_of_2(nkb))
    cfg = {"R": 16, "num_warps": 4 if nkb_p2 <= 256 else 8, "BISECT": False, **(tiles or {})}
    grid = (triton.cdiv(nqb, cfg["R"]), b * hq)
    _select_kernel[grid](
        q_high, k_high, q_low, k_low, counts, indices, float(threshold_high), float(threshold_low),
        nqb, nkb, q_len, kv_len, hq, hkv, hq // hkv,
        DH=dh, DL=dl, DC=16, NKB_P2=nkb_p2, BLOCK_SIZE=block_size,
        FORCE_SINK=force_sink, FORCE_DIAG=force_diagonal, PRECISION="ieee" if precise else "tf32", **cfg,
    )
    return counts, indices
