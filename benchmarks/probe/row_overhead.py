"""Probe: where the fixed per-query-tile cost of the sparse kernel goes, on the benchmark's realistic masks.

The kernel's per-tile work (prism_mm.kernels.block_sparse._attend_row, host row descriptors, batch 1) inside a program
with switches around the query-tile read and the output write, each timed against the product kernel on the same masks:
  Q_EVICT / O_EVICT  the Q load / O store with an evict-first L2 policy (both are touched once; K/V are reused)
  Q_TMA / O_TMA      the Q tile read / O tile written by TMA through host descriptors
and diagnostic switches that give wrong results on purpose, to bound what a fix could save: NO_Q (no Q load),
NO_O (no O store), Q_HOT (every program reads the same few query tiles, so its Q load always hits L2).
Results (NVIDIA H100, triton 3.6): row_overhead-h100.txt (round 1), row_overhead2-h100.txt (round 2),
row_overhead3-h100.txt (round 3, this switch set; its last lines: a rerun after the kernel's row code became
the helper this probe calls). Round 1 (commit 3b37e5b) switched the tail-block count to the host,
loaded the list length / first entry before Q, ran masked tiles first, tried a persistent grid and dropped the
causal mask: all within noise except the persistent grid (16-27% slower). Round 2 added the eviction policies and
the TMA store (no effect); O_EVICT alone and O_TMA alone are not in VARIANTS any more. Summary: benchmarks/NOTES.md.
Run on a GPU: PYTHONPATH=. python benchmarks/probe/row_overhead.py [LENGTH ...] [--densities D ...]
"""
import statistics
import sys

import torch
import triton
import triton.language as tl

from benchmarks.kernels import BS, D, bench, realistic_mask
from prism_mm.kernels import reference as ref
from prism_mm.kernels.block_sparse import _attend_row, _program_tile, block_sparse_attention, rows_descriptor


@triton.jit
def _probe_fwd(Q, QD, K, V, O, CNT, IDX, qk_scale, s_qh, s_ql, s_oh, s_ol, s_ch, s_cm, s_ih, s_im, Hq, GROUP, q_len, kv_len,
               kv_rows, HEAD_DIM: tl.constexpr, SEL_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               Q_EVICT: tl.constexpr, O_EVICT: tl.constexpr, O_TMA: tl.constexpr, NO_Q: tl.constexpr,
               NO_O: tl.constexpr, Q_TMA: tl.constexpr, Q_HOT: tl.constexpr):
    _, h, kvh, q_start, row = _program_tile(tl.program_id(0), q_len, Hq, GROUP, BLOCK_M, SEL_BLOCK)  # batch 1
    offset = kv_len - q_len
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    cnt_ptr = CNT + h * s_ch + row * s_cm
    idx_ptr = IDX + h.to(tl.int64) * s_ih + row.to(tl.int64) * s_im
    q_ptrs = Q + h.to(tl.int64) * s_qh + offs_m[:, None].to(tl.int64) * s_ql + offs_d[None, :]
    qmask = (offs_m < q_len)[:, None]
    if NO_Q:
        q = tl.full([BLOCK_M, HEAD_DIM], 0.01, dtype=Q.dtype.element_ty)
    elif Q_TMA:  # Q: a host descriptor over the rows of [1, H, L, D]
        q = QD.load([h * q_len + q_start, 0])
    elif Q_HOT:  # every program reads the first query tile of its head's first KV group: an L2 hit
        q = tl.load(Q + (kvh * GROUP).to(tl.int64) * s_qh + tl.arange(0, BLOCK_M)[:, None] * s_ql + offs_d[None, :])
    elif Q_EVICT:
        q = tl.load(q_ptrs, mask=qmask, other=0.0, eviction_policy="evict_first")
    else:
        q = tl.load(q_ptrs, mask=qmask, other=0.0)
    n = tl.load(cnt_ptr)
    row0 = kvh * kv_rows
    out = _attend_row(q, qk_scale, idx_ptr, n, offset, q_start, offs_m, offs_n, offs_d, kv_len,
                      K, row0, 0, 0, 0, V, row0, 0, 0, 0, HEAD_DIM, HEAD_DIM, SEL_BLOCK, BLOCK_M, BLOCK_N, 2)
    out = out.to(Q.dtype.element_ty)
    if O_TMA:  # O: a host descriptor over the rows of a [1, L, H, D] buffer (q_len a multiple of BLOCK_M)
        O.store([q_start, h * HEAD_DIM], out)
    else:
        o_ptrs = O + h.to(tl.int64) * s_oh + offs_m[:, None].to(tl.int64) * s_ol + offs_d[None, :]
        if NO_O:
            tl.store(o_ptrs, out, mask=qmask & (out != out))  # never true (no NaN): keeps the work, skips the write
        elif O_EVICT:
            tl.store(o_ptrs, out, mask=qmask, eviction_policy="evict_first")
        else:
            tl.store(o_ptrs, out, mask=qmask)


VARIANTS = {
    "base": {},
    "q-evict-first": dict(Q_EVICT=1),
    "o-tma+q-evict-first": dict(O_TMA=1, Q_EVICT=1),
    "q-tma": dict(Q_TMA=1),
    "diag:no-q": dict(NO_Q=1),
    "diag:q-hot": dict(Q_HOT=1),
    "diag:no-o": dict(NO_O=1),
}


KERNELS = {}  # compiled kernel per switch set (registers, spills)


def probe(q, k, v, cnt, idx, out, **sw):
    """One launch of the probe kernel; q/k/v [1, H, L, D] contiguous, out a [1, L, H, D] buffer viewed as [1, H, L, D]."""
    hq, q_len, hkv, kv_len = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    kd, _, kv_rows, _ = rows_descriptor(k, 64)
    vd, *_ = rows_descriptor(v, 64)
    o = rows_descriptor(out, 128)[0] if sw.get("O_TMA") else out
    qd = rows_descriptor(q, 128)[0] if sw.get("Q_TMA") else q
    flags = {**dict(Q_EVICT=0, O_EVICT=0, O_TMA=0, NO_Q=0, NO_O=0, Q_TMA=0, Q_HOT=0), **sw}
    KERNELS[",".join(f"{flag}={val}" for flag, val in sw.items()) or "base"] = _probe_fwd[(triton.cdiv(q_len, 128) * hq,)](
        q, qd, kd, vd, o, cnt, idx, q.shape[-1] ** -0.5 * 1.4426950408889634, q.stride(1), q.stride(2),
        out.stride(1), out.stride(2), cnt.stride(1), cnt.stride(2), idx.stride(1), idx.stride(2),
        hq, hq // hkv, q_len, kv_len, kv_rows, HEAD_DIM=D, SEL_BLOCK=BS, BLOCK_M=128, BLOCK_N=64,
        num_warps=8, num_stages=2, maxnreg=128, **flags)
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
            if density == densities[0] and n == lengths[0]:
                print("  compiled: " + "  ".join(f"{k}: regs {getattr(c, 'n_regs', '?')} spills {getattr(c, 'n_spills', '?')}"
                                                 for k, c in KERNELS.items()))
            base = statistics.median(times["product"])
            line = "  ".join(f"{name} {statistics.median(t):.3f} ({statistics.median(t) / base:.3f})" for name, t in times.items())
            print(f"{n // 1024}K density {density}: {line}", flush=True)


if __name__ == "__main__":
    # usage: row_overhead.py [LENGTH ...] [--densities D ...]
    argv = sys.argv[1:]
    cut = argv.index("--densities") if "--densities" in argv else len(argv)
    main([int(a) for a in argv[:cut]] or [32768, 65536], [float(a) for a in argv[cut + 1:]] or [0.05, 0.1, 1.0])
