"""Tuning sweep on a CUDA GPU: launch configurations of the sparse-attention kernel and the pieces
of the estimation step, each timed against SDPA cuDNN in the same run. Feeds benchmarks/NOTES.md.

    python -m benchmarks.variants --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton

from benchmarks.kernels import BS, D, bench, realistic_mask, sdpa_runner
from prism_mm import PrismConfig, RopeLayout
from prism_mm.kernels import estimate as est_kernel
from prism_mm.kernels import pool as pool_kernel
from prism_mm.kernels import reference as ref
from prism_mm.kernels.block_sparse import block_sparse_attention
from prism_mm.selection import estimate

TMA = dict(USE_TMA=True)
BEST = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, maxnreg=128, **TMA)
ATTN = {  # the variants of the last sweep; earlier ones and their times: benchmarks/NOTES.md
    "m128n64w8s2-r128": BEST,
    "m128n32w8s4-r128": {**BEST, "BLOCK_N": 32, "num_stages": 4},
    "m128n32w8s3-r128": {**BEST, "BLOCK_N": 32, "num_stages": 3},
}


def compiled_info(seen: set) -> dict | None:
    """Registers, spills and shared memory of the kernel compiled since the last call (best effort)."""
    from prism_mm.kernels.block_sparse import _block_sparse_fwd

    try:
        for entry in _block_sparse_fwd.device_caches.values():
            for kern in entry[0].values():
                if id(kern) not in seen:
                    seen.add(id(kern))
                    return {"regs": kern.n_regs, "spills": kern.n_spills, "shared": kern.metadata.shared}
    except Exception as e:  # noqa: BLE001 - triton internals differ across versions
        return {"error": str(e)[:100]}
    return None


def timed(name, fn, results, **kw):
    try:
        fn()
        torch.cuda.synchronize()
        ms = bench(fn, **kw)
    except Exception as e:  # noqa: BLE001 - a failing variant is a result too
        print(f"{name}: FAILED {type(e).__name__}: {str(e)[:200]}")
        results[name] = None
        return None
    results[name] = ms
    print(f"{name}: {ms:.3f} ms", flush=True)
    return ms


def time_estimation(q, k, n, r):
    from prism_mm.selection import _band_tensors

    cfg = PrismConfig.video(min_sparse_len=0)
    bands = RopeLayout(head_dim=D, theta=1e6, mrope_section=(16, 24, 24)).bands(*cfg.band_dims(D))
    timed(f"{n} est total (default)", lambda: estimate(q, k, cfg, bands), r)
    hi_idx, lo_idx, hi_pos, lo_pos = _band_tensors(bands, D, q.device)
    timed(f"{n} pool_bands q", lambda: pool_kernel.pool_bands(q, BS, hi_pos, lo_pos, 64, 96), r)
    timed(f"{n} pool_bands k", lambda: pool_kernel.pool_bands(k, BS, hi_pos, lo_pos, 64, 96), r)
    (qh, ql, qe), (kh, kl, ke) = (pool_kernel.pool_bands(x, BS, hi_pos, lo_pos, 64, 96) for x in (q, k))
    sel_args = (qh, kh, ql, kl, qe, ke, D, 0.93, 0.93, n, n, BS)
    timed(f"{n} select tf32", lambda: est_kernel.select_blocks(*sel_args), r)
    timed(f"{n} select ieee", lambda: est_kernel.select_blocks(*sel_args, precise=True), r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--lengths", type=int, nargs="*", default=[32768, 131072])
    ap.add_argument("--estimation", action="store_true", help="also time the estimation pieces")
    ap.add_argument("--variants", nargs="*", default=list(ATTN))
    ap.add_argument("--densities", type=float, nargs="*", default=[1.0, 0.1, 0.05])
    args = ap.parse_args()
    hq, hkv = 28, 4
    gen = torch.Generator(device="cuda").manual_seed(0)
    res: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__}
    for n in args.lengths:
        r = res[str(n)] = {}
        q = torch.randn(1, hq, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
        big = dict(warmup=100, rep=1500) if n > 65536 else {}
        timed(f"{n} cudnn", sdpa_runner(q, k, v, "cudnn"), r, **big)
        if args.estimation:
            time_estimation(q, k, n, r)
        # --- attention kernel configurations (registers / spills / shared memory of each compiled variant reported)
        seen: set = set()
        for density in args.densities:
            mask = realistic_mask(hq, n, density, gen)
            cnt, idx = ref.indices_from_block_mask(mask)
            out = torch.empty(1, n, hq, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            expected = None
            for name in args.variants:
                tiles = ATTN[name]
                ms = timed(f"{n} attn {name} d{density}", lambda: block_sparse_attention(q, k, v, cnt, idx, BS, out=out, tiles=tiles),
                           r, **(big if density == 1.0 else {}))
                info = compiled_info(seen)
                if info:
                    res.setdefault("compiled", {})[name] = info
                    print(f"  {name}: {info}")
                if ms is not None:
                    got = out[:, :, -256:].float().clone()
                    if expected is None:
                        expected = got
                    r[f"{n} attn {name} d{density} diff"] = ((got - expected).norm() / expected.norm()).item()
            del mask, cnt, idx, out
        del q, k, v
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
