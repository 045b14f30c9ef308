"""Probe: where the fixed per-query-tile cost of the sparse kernel goes, on the benchmark's realistic masks.

A copy of the kernel's program body (prism_mm.kernels.block_sparse, host row descriptors) with switches:
  TAIL_HOST  the number of key blocks that need the causal mask comes from the host (1 when the causal
             offset is a multiple of the block size, else 2) instead of loading the last two list entries
  CNT_FIRST  the list length is loaded before the query tile (its latency overlaps the Q load)
  IDX_EARLY  (with CNT_FIRST) the first list entry is loaded there too
  MASK_FIRST the masked tail tiles run before the unmasked ones
  PERSIST    a persistent grid (two programs per SM) walking the query tiles in the launch order
and two diagnostic switches that give wrong results on purpose, to bound what a fix can save:
  NO_MASK    no causal masking on the tail tiles;  NO_QO  no Q load (zeros) and no O store.
Run on a GPU: PYTHONPATH=. python benchmarks/probe/row_overhead.py [LENGTH ...] [--densities D ...]
(output: row_overhead-h100.txt)
"""
import statistics
import sys

import torch
import triton
import triton.language as tl

from benchmarks.kernels import BS, D, bench, realistic_mask
from prism_mm.kernels import reference as ref
from prism_mm.kernels.block_sparse import _kv_tile, _softmax_pv, _tile_start, block_sparse_attention, rows_descriptor


@triton.jit
def _row(Q, K, V, O, CNT, IDX, qk_scale, t, s_qh, s_ql, s_oh, s_ol, s_ch, s_cm, s_ih, s_im, GROUP, q_len, kv_len, kv_rows,
         HEAD_DIM: tl.constexpr, SEL_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         TAIL_HOST: tl.constexpr, TAIL: tl.constexpr, CNT_FIRST: tl.constexpr, MASK_FIRST: tl.constexpr,
         NO_MASK: tl.constexpr, NO_QO: tl.constexpr, IDX_EARLY: tl.constexpr):
    n_m = tl.cdiv(q_len, BLOCK_M)
    m_tile = n_m - 1 - t % n_m
    h = t // n_m  # batch 1
    kvh = h // GROUP
    q_start = m_tile * BLOCK_M
    row = q_start // SEL_BLOCK
    offset = kv_len - q_len
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    cnt_ptr = CNT + h * s_ch + row * s_cm
    idx_ptr = IDX + h.to(tl.int64) * s_ih + row.to(tl.int64) * s_im
    if CNT_FIRST:
        n = tl.load(cnt_ptr)
        if IDX_EARLY:  # the first list entry in flight with the Q load (list entries are >= -1: n is unchanged)
            n = tl.where(tl.load(idx_ptr) < -1, 0, n)
    q_ptrs = Q + h.to(tl.int64) * s_qh + offs_m[:, None].to(tl.int64) * s_ql + offs_d[None, :]
    qmask = (offs_m < q_len)[:, None]
    if NO_QO:
        q = tl.full([BLOCK_M, HEAD_DIM], 0.01, dtype=Q.dtype.element_ty)
    else:
        q = tl.load(q_ptrs, mask=qmask, other=0.0)
    if not CNT_FIRST:
        n = tl.load(cnt_ptr)
    row0 = kvh * kv_rows
    offs_m_abs = offset + offs_m
    if TAIL_HOST:
        n_tail = tl.minimum(n, TAIL)
    else:
        first_masked = (offset + q_start + 1) // SEL_BLOCK
        last = tl.load(idx_ptr + n - 1, mask=n >= 1, other=-1)
        second_last = tl.load(idx_ptr + n - 2, mask=n >= 2, other=-1)
        n_tail = (last >= first_masked).to(tl.int32) + (second_last >= first_masked).to(tl.int32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    SUBS: tl.constexpr = SEL_BLOCK // BLOCK_N
    n_free = (n - n_tail) * SUBS
    if MASK_FIRST:
        for j in tl.range(n_free, n * SUBS):
            start_n = _tile_start(idx_ptr, j, SEL_BLOCK, BLOCK_N)
            k = _kv_tile(K, row0, 0, start_n, offs_n, offs_d, kv_len, 0, 0, HEAD_DIM, True, 2)
            s = tl.dot(q, tl.trans(k))
            if not NO_MASK:
                s = tl.where(start_n + offs_n[None, :] <= offs_m_abs[:, None], s, float("-inf"))
            v = _kv_tile(V, row0, 0, start_n, offs_n, offs_d, kv_len, 0, 0, HEAD_DIM, True, 2)
            acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v, qk_scale, not NO_MASK)
    for j in tl.range(0, n_free):
        start_n = _tile_start(idx_ptr, j, SEL_BLOCK, BLOCK_N)
        k = _kv_tile(K, row0, 0, start_n, offs_n, offs_d, kv_len, 0, 0, HEAD_DIM, False, 2)
        s = tl.dot(q, tl.trans(k))
        v = _kv_tile(V, row0, 0, start_n, offs_n, offs_d, kv_len, 0, 0, HEAD_DIM, False, 2)
        acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v, qk_scale, False)  # visible keys: m stays finite
    if not MASK_FIRST:
        for j in tl.range(n_free, n * SUBS):
            start_n = _tile_start(idx_ptr, j, SEL_BLOCK, BLOCK_N)
            k = _kv_tile(K, row0, 0, start_n, offs_n, offs_d, kv_len, 0, 0, HEAD_DIM, True, 2)
            s = tl.dot(q, tl.trans(k))
            if not NO_MASK:
                s = tl.where(start_n + offs_n[None, :] <= offs_m_abs[:, None], s, float("-inf"))
            v = _kv_tile(V, row0, 0, start_n, offs_n, offs_d, kv_len, 0, 0, HEAD_DIM, True, 2)
            acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v, qk_scale, not NO_MASK)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = (acc / l_safe[:, None]).to(O.dtype.element_ty)
    o_ptrs = O + h.to(tl.int64) * s_oh + offs_m[:, None].to(tl.int64) * s_ol + offs_d[None, :]
    if NO_QO:
        tl.store(o_ptrs, out, mask=qmask & (l_i < 0.0)[:, None])  # never true: keeps the work, skips the write
    else:
        tl.store(o_ptrs, out, mask=qmask)


@triton.jit
def _probe_fwd(Q, K, V, O, CNT, IDX, qk_scale, s_qh, s_ql, s_oh, s_ol, s_ch, s_cm, s_ih, s_im,
               GROUP, q_len, kv_len, kv_rows, total,
               HEAD_DIM: tl.constexpr, SEL_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               TAIL_HOST: tl.constexpr, TAIL: tl.constexpr, CNT_FIRST: tl.constexpr, MASK_FIRST: tl.constexpr,
               PERSIST: tl.constexpr, NO_MASK: tl.constexpr, NO_QO: tl.constexpr, IDX_EARLY: tl.constexpr):
    if PERSIST:
        for t in range(tl.program_id(0), total, tl.num_programs(0)):
            _row(Q, K, V, O, CNT, IDX, qk_scale, t, s_qh, s_ql, s_oh, s_ol, s_ch, s_cm, s_ih, s_im, GROUP, q_len, kv_len,
                 kv_rows, HEAD_DIM, SEL_BLOCK, BLOCK_M, BLOCK_N, TAIL_HOST, TAIL, CNT_FIRST, MASK_FIRST, NO_MASK, NO_QO, IDX_EARLY)
    else:
        _row(Q, K, V, O, CNT, IDX, qk_scale, tl.program_id(0), s_qh, s_ql, s_oh, s_ol, s_ch, s_cm, s_ih, s_im, GROUP,
             q_len, kv_len, kv_rows, HEAD_DIM, SEL_BLOCK, BLOCK_M, BLOCK_N, TAIL_HOST, TAIL, CNT_FIRST, MASK_FIRST,
             NO_MASK, NO_QO, IDX_EARLY)


VARIANTS = {
    "base": {},
    "tail-host": dict(TAIL_HOST=1),
    "tail-host+cnt-first": dict(TAIL_HOST=1, CNT_FIRST=1),
    "tail-host+cnt-first+idx-early": dict(TAIL_HOST=1, CNT_FIRST=1, IDX_EARLY=1),
    "tail-host+mask-first": dict(TAIL_HOST=1, MASK_FIRST=1),
    "persist": dict(PERSIST=1),
    "persist+tail-host+cnt-first": dict(PERSIST=1, TAIL_HOST=1, CNT_FIRST=1),
    "persist+tail-host+cnt-first+idx-early": dict(PERSIST=1, TAIL_HOST=1, CNT_FIRST=1, IDX_EARLY=1),
    "diag:no-mask": dict(TAIL_HOST=1, NO_MASK=1),
    "diag:no-qo": dict(TAIL_HOST=1, NO_QO=1),
}


def probe(q, k, v, cnt, idx, out, **sw):
    """One launch of the probe kernel; q/k/v [1, H, L, D] contiguous, out a [1, L, H, D] buffer viewed as [1, H, L, D]."""
    hq, q_len, hkv, kv_len = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    kd, _, kv_rows, _ = rows_descriptor(k, 64)
    vd, *_ = rows_descriptor(v, 64)
    total = triton.cdiv(q_len, 128) * hq
    persist = sw.get("PERSIST", 0)
    slots = 2 * torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 3
    grid = (min(total, slots) if persist else total,)
    flags = {**dict(TAIL_HOST=0, CNT_FIRST=0, MASK_FIRST=0, PERSIST=0, NO_MASK=0, NO_QO=0, IDX_EARLY=0), **sw}
    _probe_fwd[grid](q, kd, vd, out, cnt, idx, q.shape[-1] ** -0.5 * 1.4426950408889634, q.stride(1), q.stride(2),
                     out.stride(1), out.stride(2), cnt.stride(1), cnt.stride(2), idx.stride(1), idx.stride(2),
                     hq // hkv, q_len, kv_len, kv_rows, total, HEAD_DIM=D, SEL_BLOCK=BS, BLOCK_M=128, BLOCK_N=64,
                     TAIL=1 if (kv_len - q_len) % BS == 0 else 2, num_warps=8, num_stages=2, maxnreg=128, **flags)
    return out


def main(lengths, densities, masks=3, hq=28, hkv=4):
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}; {hq}/{hkv} heads, d {D}, block {BS}; "
          f"median over {masks} realistic masks of the median of do_bench")
    for n in lengths:
        q = torch.randn(1, hq, n, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        out = torch.empty(1, n, hq, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        for density in densities:
            times = {name: [] for name in ["product", *VARIANTS]}
            for _ in range(masks):
                mask = realistic_mask(hq, n, density, gen)
                cnt, idx = ref.indices_from_block_mask(mask)
                want = block_sparse_attention(q, k, v, cnt, idx, BS).float()
                times["product"].append(bench(lambda: block_sparse_attention(q, k, v, cnt, idx, BS, out=out)))
                for name, sw in VARIANTS.items():
                    got = probe(q, k, v, cnt, idx, out.fill_(float("nan")), **sw).float()
                    err = ((got - want).norm() / want.norm()).item()
                    if not name.startswith("diag") and not err < 1e-2:
                        print(f"  {name}: WRONG, rel err {err:.2e}")
                    times[name].append(bench(lambda: probe(q, k, v, cnt, idx, out, **sw)))
            base = statistics.median(times["product"])
            line = "  ".join(f"{name} {statistics.median(t):.3f} ({statistics.median(t) / base:.3f})" for name, t in times.items())
            print(f"{n // 1024}K density {density}: {line}", flush=True)


if __name__ == "__main__":
    # usage: row_overhead.py [LENGTH ...] [--densities D ...]
    argv = sys.argv[1:]
    cut = argv.index("--densities") if "--densities" in argv else len(argv)
    main([int(a) for a in argv[:cut]] or [32768, 65536], [float(a) for a in argv[cut + 1:]] or [0.05, 0.1, 1.0])
