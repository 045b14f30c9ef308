"""Triton kernel: calibrated dual-band block selection -> compact per-row key-block lists.

One program scores R query-block rows of one (batch, query head) against the key blocks of its KV
head in both bands: it derives the band temperatures from the per-block energies written by the
pooling kernel, applies a causal softmax per band, then the selection rule (SelectSpec: top-p per band
and the union, or one cutoff on the mean of the two band probabilities), keeps every block of the dense-tail rows,
adds the sink and diagonal blocks, and writes the selected key-block indices (ascending) plus their count.
Nothing of size heads x q_blocks x k_blocks in float32 goes through memory.

Rows run in a "ladder": rows whose causal range fits in W key blocks are scored with a row width of W
(64, 128, ..., next_pow2(NKB)), so the causal upper triangle is mostly not computed. All steps share one
launch (each step owns a range of programs; one host launch per selection). Up to LADDER_MIN_KBLOCKS key
blocks every row runs at full width instead: there the work is small and one latency-bound wave dominates.
Twin: torch_ops.select_blocks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import BlockSelection, Pooled, SelectSpec, dense_tail_row, next_pow2, num_blocks


@triton.jit
def _head_rms_ratio(E, row0, n_rows, band: tl.constexpr, d_band, d, W: tl.constexpr):
    """rms(pooled band dims) / rms(pooled all dims) over the n_rows blocks of one head."""
    offs = tl.arange(0, W)
    e_all = tl.zeros([W], dtype=tl.float32)
    e_band = tl.zeros([W], dtype=tl.float32)
    for r0 in range(0, n_rows, W):
        m = r0 + offs < n_rows
        e_all += tl.load(E + (row0 + r0 + offs) * 3, mask=m, other=0.0)
        e_band += tl.load(E + (row0 + r0 + offs) * 3 + band, mask=m, other=0.0)
    rms_all = tl.sqrt(tl.sum(e_all, axis=0) / (n_rows * d))
    rms_band = tl.sqrt(tl.sum(e_band, axis=0) / (n_rows * d_band))
    return rms_band / tl.maximum(rms_all, 1e-6)


@triton.jit
def _band_probs(
    Qp, Kp, rows, cols, row_ok, valid, n_kblocks, scale,
    D: tl.constexpr, DC: tl.constexpr, R: tl.constexpr, W: tl.constexpr, PRECISION: tl.constexpr,
):
    """[R, W] causal softmax over key blocks of one band's scaled pooled logits (0 outside `valid`)."""
    acc = tl.zeros([R, W], dtype=tl.float32)
    for d0 in tl.static_range(0, D, DC):
        dd = d0 + tl.arange(0, DC)
        q = tl.load(Qp + rows[:, None] * D + dd[None, :], mask=row_ok[:, None] & (dd < D)[None, :], other=0.0)
        kt = tl.load(Kp + cols[None, :] * D + dd[:, None], mask=(cols < n_kblocks)[None, :] & (dd < D)[:, None], other=0.0)
        acc += tl.dot(q, kt, input_precision=PRECISION)
    logits = tl.where(valid, acc * scale, float("-inf"))
    m = tl.max(logits, axis=1)
    m = tl.where(row_ok, m, 0.0)
    p = tl.where(valid, tl.exp(logits - m[:, None]), 0.0)
    z = tl.sum(p, axis=1)
    return p / tl.where(z > 0, z, 1.0)[:, None]


@triton.jit
def _top_p(p, valid, thr, R: tl.constexpr, W: tl.constexpr, ITERS: tl.constexpr):
    """[R, W] the smallest set of entries per row whose probability mass reaches thr (rule of torch_ops.top_p_mask)."""
    # tau = k-th largest, k = #entries whose exclusive cumulative mass is below thr, i.e.
    # the largest v with mass(p >= v) >= thr. Binary search over the fp32 bit patterns (monotone
    # for p >= 0), no sort. Invariant: mass(p >= lo) >= thr > mass(p >= hi). Start: entries below
    # (1 - thr) / W hold less than 1 - thr in total, so lo = bits((1 - thr) / W) satisfies it.
    # Thresholds in (0, 0.99] leave < 2^27 bit patterns between lo and hi: 16 halvings narrow that to
    # a relative width of 2^-12, and keeping p >= lo returns a superset of the exact set (mass >= thr
    # still holds) that differs from it only by entries within 0.025% of tau.
    bits = p.to(tl.int32, bitcast=True)
    floor = tl.maximum((1.0 - thr) / W, 0.0)
    lo = tl.zeros([R], dtype=tl.int32) + floor.to(tl.int32, bitcast=True)
    hi = tl.max(bits, axis=1) + 1
    for _ in tl.static_range(ITERS):
        mid = lo + (hi - lo) // 2
        ok = tl.sum(tl.where(bits >= mid[:, None], p, 0.0), axis=1) >= thr
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    keep = (bits >= lo[:, None]) & valid
    return keep | (valid & (thr >= 1.0))


@triton.jit
def _select_rows(
    QH, KH, QL, KL, QE, KE, CNT, IDX, thr_high, thr_low, cutoff, dense_row,
    pid_r, pid_bh, row_start, row_end, n_qblocks, n_kblocks, q_len, kv_len, Hq, Hkv, GROUP,
    D: tl.constexpr, DH: tl.constexpr, DL: tl.constexpr, DC: tl.constexpr, R: tl.constexpr, W: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, CALIBRATE: tl.constexpr, FORCE_SINK: tl.constexpr, FORCE_DIAG: tl.constexpr,
    PRECISION: tl.constexpr, ITERS: tl.constexpr, CUTOFF_RULE: tl.constexpr,
):
    """Rows row_start + pid_r * R + [0, R) (below row_end) of one (batch, query head), scored W key blocks wide."""
    b = pid_bh // Hq
    h = pid_bh % Hq
    kvh = b * Hkv + h // GROUP
    rows = row_start + pid_r * R + tl.arange(0, R)
    cols = tl.arange(0, W)
    row_ok = rows < row_end
    offset = kv_len - q_len
    first_pos = offset + rows * BLOCK_SIZE
    last_pos = tl.minimum(first_pos + BLOCK_SIZE, kv_len) - 1
    diag_lo = first_pos // BLOCK_SIZE
    diag_hi = last_pos // BLOCK_SIZE
    valid = (cols[None, :] <= diag_hi[:, None]) & row_ok[:, None]

    q_row0 = pid_bh.to(tl.int64) * n_qblocks
    k_row0 = kvh.to(tl.int64) * n_kblocks
    # logits_band = q_band . k_band / (sqrt(d_band) * t_band),
    # t_band = sqrt(d_band / d) * (rms(q_band) / rms(q)) * (rms(k_band) / rms(k))   (if CALIBRATE)
    scale_h = 1.0 / tl.sqrt(DH * 1.0)
    scale_l = 1.0 / tl.sqrt(DL * 1.0)
    if CALIBRATE:
        t_h = tl.sqrt(DH / D) * _head_rms_ratio(QE, q_row0, n_qblocks, 1, DH, D, 256) \
            * _head_rms_ratio(KE, k_row0, n_kblocks, 1, DH, D, 256)
        t_l = tl.sqrt(DL / D) * _head_rms_ratio(QE, q_row0, n_qblocks, 2, DL, D, 256) \
            * _head_rms_ratio(KE, k_row0, n_kblocks, 2, DL, D, 256)
        scale_h = scale_h / tl.maximum(t_h, 1e-6)
        scale_l = scale_l / tl.maximum(t_l, 1e-6)
    p_h = _band_probs(QH + q_row0 * DH, KH + k_row0 * DH, rows, cols, row_ok, valid, n_kblocks, scale_h,
                      DH, DC, R, W, PRECISION)
    p_l = _band_probs(QL + q_row0 * DL, KL + k_row0 * DL, rows, cols, row_ok, valid, n_kblocks, scale_l,
                      DL, DC, R, W, PRECISION)
    if CUTOFF_RULE:
        sel = (0.5 * (p_h + p_l) >= cutoff) & valid
    else:
        sel = _top_p(p_h, valid, thr_high, R, W, ITERS) | _top_p(p_l, valid, thr_low, R, W, ITERS)
    sel = sel | (rows >= dense_row)[:, None]  # the chunk's last rows (SelectSpec.dense_tail) keep every block
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


@triton.jit
def _select_kernel(
    QH, KH, QL, KL, QE, KE, qh_o, kh_o, ql_o, kl_o, qe_o, ke_o, CNT, IDX, thr_high, thr_low, cutoff, dense_row,
    n_qblocks, n_kblocks, q_len, kv_len, Hq, Hkv, GROUP,
    D: tl.constexpr, DH: tl.constexpr, DL: tl.constexpr, DC: tl.constexpr, R: tl.constexpr,
    W_FIRST: tl.constexpr, STEPS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, CALIBRATE: tl.constexpr, FORCE_SINK: tl.constexpr, FORCE_DIAG: tl.constexpr,
    PRECISION: tl.constexpr, ITERS: tl.constexpr, CUTOFF_RULE: tl.constexpr,
):
    """The band vectors and energies of Q and K are at element offsets *_o of their pointers (parts of one buffer, or
    separate tensors at offset 0). Every ladder step in one launch: step s (width W_FIRST << s) owns the programs
    after those of the steps before it; its rows are those whose causal key range fits its width (the rule of
    `ladder`, which sizes the grid), the last step takes the remaining rows."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offset = kv_len - q_len
    start = n_qblocks * 0
    first_program = n_qblocks * 0
    for s in tl.static_range(STEPS):
        if s == STEPS - 1:
            end = n_qblocks
        else:
            end = tl.minimum(tl.maximum(((W_FIRST << s) * BLOCK_SIZE - offset) // BLOCK_SIZE, start), n_qblocks)
        programs = (end - start + R - 1) // R
        if (pid >= first_program) & (pid < first_program + programs):
            _select_rows(QH + qh_o, KH + kh_o, QL + ql_o, KL + kl_o, QE + qe_o, KE + ke_o, CNT, IDX,
                         thr_high, thr_low, cutoff, dense_row,
                         pid - first_program, pid_bh, start, end, n_qblocks, n_kblocks, q_len, kv_len, Hq, Hkv, GROUP,
                         D, DH, DL, DC, R, W_FIRST << s, BLOCK_SIZE, CALIBRATE, FORCE_SINK, FORCE_DIAG,
                         PRECISION, ITERS, CUTOFF_RULE)
        first_program += programs
        start = end


LADDER_MIN_KBLOCKS = 257  # 32K tokens at block 128 run as one launch


def ladder(n_qblocks: int, n_kblocks: int, q_len: int, kv_len: int, block_size: int, min_width: int = 64,
           min_kblocks: int = LADDER_MIN_KBLOCKS):
    """[(row_start, row_end, width)]: consecutive row ranges whose causal key range fits in `width`;
    one full-width step below `min_kblocks` key blocks."""
    offset = kv_len - q_len
    full = max(16, next_pow2(n_kblocks))
    if n_kblocks < min_kblocks:
        return [(0, n_qblocks, full)]
    steps, start, width = [], 0, min(min_width, full)
    while start < n_qblocks:
        # rows i with last key block (offset + (i+1)*bs - 1) // bs < width
        end = n_qblocks if width >= full else min(n_qblocks, max(0, (width * block_size - offset) // block_size))
        if end > start:
            steps.append((start, end, width))
            start = end
        width *= 2
    return steps


def select_blocks(q: Pooled, k: Pooled, spec: SelectSpec, q_len: int, kv_len: int) -> BlockSelection:
    """Dual-band block selection from pooled Q and K (see SelectSpec); twin of torch_ops.select_blocks.

    spec.precise=False scores with TF32 tensor-core dots on GPUs and stops the top-p search at a relative
    width of 2^-12 (a superset of the exact selection; boundary flips ~1e-5 of the blocks); precise=True
    uses IEEE fp32 dots and the exact 31-step search. Rows run at full width below LADDER_MIN_KBLOCKS key
    blocks, in causal ladder steps from there on; one launch either way.
    """
    return _select(q, k, spec, q_len, kv_len, LADDER_MIN_KBLOCKS)


def _select(q: Pooled, k: Pooled, spec: SelectSpec, q_len: int, kv_len: int, ladder_min_kblocks: int) -> BlockSelection:
    """select_blocks with the ladder's switch-over point as a parameter (the tests force the ladder at small sizes)."""
    for name, pooled in (("q", q), ("k", k)):
        if pooled.buffer is None:  # tensors from elsewhere (parts carved by the pooling kernel fit by construction)
            fits = [t.dtype is torch.float32 and t.dim() == 4 and t.is_contiguous() for t in pooled]
            if not all(fits):
                part = ("high", "low", "energy")[fits.index(False)]
                raise ValueError(f"{name}.{part} must be a contiguous float32 [B, H, blocks, dims] tensor")
            if pooled.low.shape[:3] != pooled.high.shape[:3] or pooled.energy.shape != (*pooled.high.shape[:3], 3):
                raise ValueError(f"{name}'s band tensors disagree on batch / heads / blocks")
    if q.device != k.device:
        raise ValueError(f"pooled q and k must be on one device, got {q.device} and {k.device}")
    b, hq, nqb, dh, dl = q.shape
    hkv, nkb = k.shape[1], k.shape[2]
    if hq % hkv or k.shape[0] != b or k.shape[3:] != (dh, dl):
        raise ValueError("pooled q and k disagree on batch, heads or band dims")
    block_size = spec.block_size
    if nqb != num_blocks(q_len, block_size) or nkb != num_blocks(kv_len, block_size):
        raise ValueError("pooled tensors do not match q_len / kv_len / block_size")
    device = q.device
    counts = torch.empty(b, hq, nqb, device=device, dtype=torch.int32)
    indices = torch.empty(b, hq, nqb, nkb, device=device, dtype=torch.int32)
    (qh, qh_o), (ql, ql_o), (qe, qe_o) = q.pointers()
    (kh, kh_o), (kl, kl_o), (ke, ke_o) = k.pointers()
    steps = ladder(nqb, nkb, q_len, kv_len, block_size, min_kblocks=ladder_min_kblocks)
    rows, widest = 16, steps[-1][2]
    grid = (sum(num_blocks(end - start, rows) for start, end, _ in steps), b * hq)
    _select_kernel[grid](
        qh, kh, ql, kl, qe, ke, qh_o, kh_o, ql_o, kl_o, qe_o, ke_o, counts, indices,
        float(spec.threshold_high), float(spec.threshold_low), float(spec.cutoff or 0.0),
        dense_tail_row(q_len, block_size, spec.dense_tail), nqb, nkb, q_len, kv_len, hq, hkv, hq // hkv,
        D=spec.head_dim, DH=dh, DL=dl, DC=16, R=rows, W_FIRST=steps[0][2], STEPS=len(steps), BLOCK_SIZE=block_size,
        CALIBRATE=spec.calibrate, FORCE_SINK=spec.force_sink, FORCE_DIAG=spec.force_diagonal,
        PRECISION="ieee" if spec.precise else "tf32", ITERS=31 if spec.precise else 16,
        CUTOFF_RULE=spec.cutoff is not None, num_warps=4 if widest <= 128 else 8 if widest <= 512 else 16,
    )
    return BlockSelection(counts, indices, block_size, q_len, kv_len)
