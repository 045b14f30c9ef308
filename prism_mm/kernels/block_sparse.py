"""Triton kernel: causal block-sparse flash attention over compact per-row key-block lists.

Grid: one program per (query tile of BLOCK_M rows, batch x query head). Each program walks the
kv_indices list of its query block (selection blocks of SEL_BLOCK tokens, each processed as
SEL_BLOCK / BLOCK_N key tiles) with an online softmax in fp32. Only the tail of a list (the at most
two blocks that reach the query tile's own positions, which include the partial last key block)
pays for causal masking. GQA: query head h reads KV head h // group; K/V are never expanded.
On Hopper, K/V tiles arrive by TMA through tensor descriptors built once on the host.
Twin: torch_ops.block_sparse_attention.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .blocks import BlockSelection, next_pow2, num_blocks


@triton.jit
def _kv_tile(src, row0, col0, start_n, offs_n, offs_d, kv_len, stride_l, stride_d,
             HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DESC: tl.constexpr):
    """One [BLOCK_N, D] tile of K or V at key start_n.

    DESC 0: pointers (src already offset to the (batch, KV head)). 1: a 2-D tensor descriptor built on the
    device for that (batch, KV head); rows past kv_len read as zeros. 2: a 2-D descriptor built on the host
    over the rows of the whole tensor, this (batch, KV head) starting at (row0, col0); rows past kv_len are
    the next head's or batch's keys (zeros past the tensor), which the causal mask removes (their values get
    weight exactly 0, so they only need to be finite, as any real K/V tensor is).
    """
    if DESC == 2:
        tile = src.load([row0 + start_n, col0])
    elif DESC == 1:
        tile = src.load([start_n, 0])
    else:
        cols = start_n + offs_n
        mask = (offs_d < HEAD_DIM)[None, :]
        if MASKED:
            mask = mask & (cols < kv_len)[:, None]
        tile = tl.load(src + cols[:, None].to(tl.int64) * stride_l + offs_d[None, :] * stride_d, mask=mask, other=0.0)
    return tile


@triton.jit
def _softmax_pv(acc, m_i, l_i, s, v, qk_scale, MASKED: tl.constexpr):
    """Online-softmax update with the scores s of one key tile and its values v.

    The scale is folded into one FMA per score: p = exp2(s * scale - m), m kept in scaled (log2) units.
    In MASKED tiles m stays -inf for rows that have seen no visible key yet; their exponentials use 0.
    """
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    m_ref = m_new
    if MASKED:
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s * qk_scale - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, m_new, l_i


@triton.jit
def _tile_start(idx_ptr, j, SEL_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr):
    """First key position of the j-th key tile of a row's block list."""
    SUBS: tl.constexpr = SEL_BLOCK // BLOCK_N
    return tl.load(idx_ptr + j // SUBS) * SEL_BLOCK + (j % SUBS) * BLOCK_N


@triton.jit
def _attend_tiles(acc, m_i, l_i, q, qk_scale, idx_ptr, j_lo, j_hi, offs_m_abs, offs_n, offs_d, kv_len,
                  k_src, k_row0, k_col0, stride_kl, stride_kd, v_src, v_row0, v_col0, stride_vl, stride_vd,
                  HEAD_DIM: tl.constexpr, SEL_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                  DESC: tl.constexpr):
    """The software-pipelined loop over key tiles j_lo..j_hi-1 of a row's list; MASKED applies the causal mask."""
    for j in tl.range(j_lo, j_hi):
        start_n = _tile_start(idx_ptr, j, SEL_BLOCK, BLOCK_N)
        k = _kv_tile(k_src, k_row0, k_col0, start_n, offs_n, offs_d, kv_len, stride_kl, stride_kd, HEAD_DIM, MASKED, DESC)
        s = tl.dot(q, tl.trans(k))
        if MASKED:
            s = tl.where(start_n + offs_n[None, :] <= offs_m_abs[:, None], s, float("-inf"))
        v = _kv_tile(v_src, v_row0, v_col0, start_n, offs_n, offs_d, kv_len, stride_vl, stride_vd, HEAD_DIM, MASKED, DESC)
        acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v, qk_scale, MASKED)
    return acc, m_i, l_i


@triton.jit
def _program_tile(pid, q_len, Hq, GROUP, BLOCK_M: tl.constexpr, SEL_BLOCK: tl.constexpr):
    """(batch, query head, KV head, first query position, query block) of program pid.

    Heaviest (last) query tiles first; the query tiles of one head run side by side and share K/V in L2.
    """
    n_m = tl.cdiv(q_len, BLOCK_M)
    m_tile = n_m - 1 - pid % n_m
    pid_bh = pid // n_m
    h = pid_bh % Hq
    q_start = m_tile * BLOCK_M
    return pid_bh // Hq, h, h // GROUP, q_start, q_start // SEL_BLOCK


@triton.jit
def _attend_row(q, qk_scale, idx_ptr, n, offset, q_start, offs_m, offs_n, offs_d, kv_len,
                k_src, k_row0, k_col0, stride_kl, stride_kd, v_src, v_row0, v_col0, stride_vl, stride_vd,
                HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, SEL_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, DESC: tl.constexpr):
    """Attention of one query tile over the n key blocks of its list: the normalized output, fp32 [BLOCK_M, D_P2].

    Key blocks below `first_masked` end before the tile's first query position and need no mask; the list is
    ascending, so only its last two entries can reach the tile's own positions.
    """
    offs_m_abs = offset + offs_m
    first_masked = (offset + q_start + 1) // SEL_BLOCK
    last = tl.load(idx_ptr + n - 1, mask=n >= 1, other=-1)
    second_last = tl.load(idx_ptr + n - 2, mask=n >= 2, other=-1)
    n_tail = (last >= first_masked).to(tl.int32) + (second_last >= first_masked).to(tl.int32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_P2], dtype=tl.float32)
    SUBS: tl.constexpr = SEL_BLOCK // BLOCK_N
    n_free = (n - n_tail) * SUBS  # key tiles that need no causal mask
    kv = (k_src, k_row0, k_col0, stride_kl, stride_kd, v_src, v_row0, v_col0, stride_vl, stride_vd)
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, q, qk_scale, idx_ptr, 0, n_free, offs_m_abs, offs_n, offs_d, kv_len,
                                  *kv, HEAD_DIM, SEL_BLOCK, BLOCK_N, False, DESC)
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, q, qk_scale, idx_ptr, n_free, n * SUBS, offs_m_abs, offs_n, offs_d,
                                  kv_len, *kv, HEAD_DIM, SEL_BLOCK, BLOCK_N, True, DESC)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows with no visible key (empty list) write zeros
    return acc / l_safe[:, None]


@triton.jit
def _block_sparse_fwd(
    Q, K, V, O, CNT, IDX, qk_scale,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    stride_vb, stride_vh, stride_vl, stride_vd,
    stride_ob, stride_oh, stride_ol, stride_od,
    stride_cb, stride_ch, stride_cm,
    stride_ib, stride_ih, stride_im,
    Hq, GROUP, q_len, kv_len,
    k_rows_b, k_rows_h, k_cols_h, v_rows_b, v_rows_h, v_cols_h,
    HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, SEL_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DESC: tl.constexpr,
):
    b, h, kvh, q_start, row = _program_tile(tl.program_id(0), q_len, Hq, GROUP, BLOCK_M, SEL_BLOCK)
    offset = kv_len - q_len

    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_P2)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    qmask = (offs_m < q_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_base + offs_m[:, None].to(tl.int64) * stride_ql + offs_d[None, :] * stride_qd, mask=qmask, other=0.0)
    k_row0 = b * k_rows_b + kvh * k_rows_h
    k_col0 = kvh * k_cols_h
    v_row0 = b * v_rows_b + kvh * v_rows_h
    v_col0 = kvh * v_cols_h
    if DESC == 2:
        k_src = K
        v_src = V
    else:
        k_src = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
        v_src = V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh
        if DESC == 1:
            k_src = tl.make_tensor_descriptor(k_src, shape=[kv_len, HEAD_DIM], strides=[stride_kl, 1],
                                              block_shape=[BLOCK_N, HEAD_DIM])
            v_src = tl.make_tensor_descriptor(v_src, shape=[kv_len, HEAD_DIM], strides=[stride_vl, 1],
                                              block_shape=[BLOCK_N, HEAD_DIM])
    cnt_ptr = CNT + b.to(tl.int64) * stride_cb + h.to(tl.int64) * stride_ch + row * stride_cm
    idx_ptr = IDX + b.to(tl.int64) * stride_ib + h.to(tl.int64) * stride_ih + row.to(tl.int64) * stride_im
    n = tl.load(cnt_ptr)
    kv = (k_src, k_row0, k_col0, stride_kl, stride_kd, v_src, v_row0, v_col0, stride_vl, stride_vd)
    out = _attend_row(q, qk_scale, idx_ptr, n, offset, q_start, offs_m, offs_n, offs_d, kv_len, *kv,
                      HEAD_DIM, D_P2, SEL_BLOCK, BLOCK_M, BLOCK_N, DESC)
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None].to(tl.int64) * stride_ol + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=qmask)


def _ensure_tma_allocator() -> None:
    """Device-side tensor descriptors need a scratch allocator (global workspace for the descriptors)."""
    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, device="cuda", dtype=torch.int8)

    triton.set_allocator(alloc)


@functools.lru_cache(maxsize=None)
def _hopper_or_newer(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def tma_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Tensor-descriptor (TMA) loads: Hopper or newer, power-of-two head_dim, 16-byte aligned rows."""
    d = q.shape[-1]
    if not q.is_cuda or d & (d - 1) or not _hopper_or_newer(q.device.index if q.device.index is not None
                                                             else torch.cuda.current_device()):
        return False
    return all(t.stride(-1) == 1 and t.stride(-2) % 8 == 0 and t.data_ptr() % 16 == 0 for t in (k, v))


def rows_geometry(t: torch.Tensor, block_rows: int):
    """The geometry of a 2-D TMA descriptor over the rows of t [B, H, L, D], and where each (batch, head) starts in it.

    Two memory layouts qualify: [B, H, L, D] contiguous per head (head h of batch b starts at row (b*H + h)*L)
    and [B, L, H, D] viewed as [B, H, L, D] (row b*L, column h*D), transformers' memory layout. Returns
    ((shape, strides, block shape), (rows per batch, rows per head, columns per head)), or None for other memory
    layouts.
    """
    bsz, h, n, d = t.shape
    sb, sh, sl, sd = t.stride()
    if sd != 1 or sl % 8 or t.data_ptr() % 16:
        return None
    if sh == n * sl and (sb == h * sh or bsz == 1):
        rows_b, rows_h, cols_h, shape = h * n, n, 0, (bsz * h * n, d)
    elif sh == d and sl == h * d and (sb == n * sl or bsz == 1):
        rows_b, rows_h, cols_h, shape = n, 0, d, (bsz * n, h * d)
    else:
        return None
    return (shape, (sl, 1), (block_rows, d)), (rows_b, rows_h, cols_h)


def rows_descriptor(t: torch.Tensor, block_rows: int):
    """rows_geometry's descriptor over t: (descriptor, rows per batch, rows per head, columns per head), or None."""
    found = rows_geometry(t, block_rows)
    if found is None:
        return None
    geometry, rows = found
    return (descriptor(t, geometry), *rows)


def default_tiles(block_size: int, head_dim: int, use_tma: bool = False) -> dict:
    """Launch configuration (tuned on an H100, see docs/lessons.md).

    With TMA the default is 128 x 64 tiles, 8 warps, 2 stages and a 128-register cap: two programs share
    each SM (98 KB shared memory each), so one program's softmax overlaps the other's tensor-core work.
    At head_dim <= 64 the key tiles are 128 wide (H100, 32K: 1.02x cuDNN dense instead of 0.85x with 64;
    docs/lessons.md). K/V descriptors are built on the host (DESC 2) where the memory layout
    allows, else on the device (DESC 1).
    """
    block_m = min(block_size, 128)
    block_n = min(block_size, 128 if head_dim <= 64 else 64)
    tiles = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=8 if block_m >= 128 else 4, num_stages=2,
                 DESC=2 if use_tma else 0)
    if use_tma and block_m == 128 and head_dim <= 128:
        tiles["maxnreg"] = 128
    return tiles


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection,
                           scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of q [B, Hq, Lq, D] over the selected key blocks of k/v [B, Hkv, Lk, D] (any strides).

    `out` (same shape as q, any strides) receives the result if given; e.g. a [B, Lq, Hq, D] buffer viewed
    as [B, Hq, Lq, D]. Twin: torch_ops.block_sparse_attention.
    """
    return launch(q, k, v, selection, scale, out)


class _Plan(NamedTuple):
    """Everything of one launch that follows from the inputs' shapes, strides, alignment and device (not from their
    addresses): the grid, the integer arguments, the launch options, and, for DESC 2, K's and V's descriptor
    geometry (shape, strides, block)."""

    grid: tuple[int]
    ints: tuple[int, ...]
    options: dict
    descriptors: tuple | None


_plans: dict = {}
MAX_PLANS = 1024


def _make_plan(q, k, v, out, selection: BlockSelection, tiles: dict | None) -> _Plan:
    b, hq, q_len, d = q.shape
    hkv, kv_len = k.shape[1], k.shape[2]
    block_size = selection.block_size
    cfg = default_tiles(block_size, d, tma_supported(q, k, v))
    if tiles:  # an explicit tile shape gets no register cap unless it asks for one
        cfg = {**{key: val for key, val in cfg.items() if key != "maxnreg"}, **tiles}
    if block_size % cfg["BLOCK_M"] or block_size % cfg["BLOCK_N"]:
        raise ValueError(f"tile sizes {cfg['BLOCK_M']}x{cfg['BLOCK_N']} must divide block_size {block_size}")
    k_rows, v_rows, descriptors = (0, 0, 0), (0, 0, 0), None
    if cfg["DESC"]:
        if d & (d - 1) or k.stride(-1) != 1 or v.stride(-1) != 1:
            raise ValueError("tensor descriptors (DESC) need a power-of-two head_dim and contiguous last dims of k and v")
    if cfg["DESC"] == 2:
        found = [rows_geometry(t, cfg["BLOCK_N"]) for t in (k, v)]
        if None not in found:
            descriptors = tuple(geometry for geometry, _ in found)
            k_rows, v_rows = (rows for _, rows in found)
        elif tiles and tiles.get("DESC") == 2:
            raise ValueError("DESC 2 needs k and v in [B, H, L, D] or [B, L, H, D] memory layout")
        else:  # other memory layouts: descriptors built on the device per (batch, KV head)
            cfg["DESC"] = 1
    ints = (*q.stride(), *k.stride(), *v.stride(), *out.stride(), *selection.kv_num_blocks.stride(),
            *selection.kv_indices.stride()[:3], hq, hq // hkv, q_len, kv_len, *k_rows, *v_rows)
    return _Plan((num_blocks(q_len, cfg["BLOCK_M"]) * b * hq,), ints,
                 dict(HEAD_DIM=d, D_P2=next_pow2(d), SEL_BLOCK=block_size, **cfg), descriptors)


def _plan(q, k, v, out, selection: BlockSelection, tiles: dict | None) -> _Plan:
    """The launch plan of these inputs, made once per kind of input (explicit `tiles` are not cached)."""
    if tiles:
        return _make_plan(q, k, v, out, selection, tiles)
    key = (q.shape, q.stride(), k.shape, k.stride(), v.stride(), out.stride(), selection.kv_num_blocks.stride(),
           selection.kv_indices.stride(), selection.block_size, q.device, q.dtype,
           k.data_ptr() % 16 == 0, v.data_ptr() % 16 == 0)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        plan = _plans[key] = _make_plan(q, k, v, out, selection, None)
    return plan


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection, scale: float | None = None,
           out: torch.Tensor | None = None, tiles: dict | None = None) -> torch.Tensor:
    """block_sparse_attention with a launch configuration: `tiles` overrides default_tiles()
    (BLOCK_M, BLOCK_N, num_warps, num_stages, maxnreg, DESC); for benchmarks and tests of the variants.
    Checks the inputs; with DESC 2 the K and V arguments are host tensor descriptors over k and v (the plan's
    geometry)."""
    b, hq, q_len, d = q.shape
    if v.shape != k.shape or k.shape[0] != b or k.shape[3] != d or hq % k.shape[1]:
        raise ValueError(f"k and v must both be [batch, kv_heads, kv_len, head_dim] with q's batch and head_dim and "
                         f"kv_heads dividing q's heads; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    selection.check(b, hq, q_len, k.shape[2])
    out = torch.empty_like(q) if out is None else out
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    plan = _plan(q, k, v, out, selection, tiles)
    k_arg, v_arg = k, v
    if plan.descriptors is not None:
        k_arg, v_arg = (descriptor(t, geometry) for t, geometry in zip((k, v), plan.descriptors))
    elif plan.options["DESC"] == 1:
        _ensure_tma_allocator()
    _block_sparse_fwd[plan.grid](q, k_arg, v_arg, out, selection.kv_num_blocks, selection.kv_indices,
                                 scale * 1.4426950408889634, *plan.ints, **plan.options)
    return out


def descriptor(t: torch.Tensor, geometry):
    """A host TMA descriptor over t with geometry (shape, strides, block) from rows_geometry."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    shape, strides, block = geometry
    return TensorDescriptor(t, list(shape), list(strides), list(block))  # base: only its address
