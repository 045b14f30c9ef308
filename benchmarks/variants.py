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

ATTN = {
    "m128n128w8s3-tma": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, USE_TMA=True),
    "m128n128w8s4-tma": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=4, USE_TMA=True),
    "m128n128w8s2-tma": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, USE_TMA=True),
    "m128n128w8s3-tma-ws": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, USE_TMA=True, WARP_SPECIALIZE=True),
    "m128n128w4s3-tma-ws": dict(BLOCK_M=128, BLOCK_N=128, num_warps=4, num_stages=3, USE_TMA=True, WARP_SPECIALIZE=True),
    "m128n64w8s4-tma": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4, USE_TMA=True),
    "m128n128w8s3-ptr": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, USE_TMA=False),
}


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--lengths", type=int, nargs="*", default=[32768, 131072])
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
        # --- estimation pieces
        cfg = PrismConfig.video(min_sparse_len=0)
        bands = RopeLayout(head_dim=D, theta=1e6, mrope_section=(16, 24, 24)).bands(*cfg.band_dims(D))
        timed(f"{n} est total (default)", lambda: estimate(q, k, cfg, bands), r)
        from prism_mm.selection import _band_tensors

        hi_idx, lo_idx, hi_pos, lo_pos = _band_tensors(bands, D, q.device)
        timed(f"{n} pool_bands q", lambda: pool_kernel.pool_bands(q, BS, hi_pos, lo_pos, 64, 96), r)
        timed(f"{n} pool_bands k", lambda: pool_kernel.pool_bands(k, BS, hi_pos, lo_pos, 64, 96), r)
        (qh, ql, qe), (kh, kl, ke) = (pool_kernel.pool_bands(x, BS, hi_pos, lo_pos, 64, 96) for x in (q, k))
        sel_args = (qh, kh, ql, kl, qe, ke, D, 0.93, 0.93, n, n, BS)
        timed(f"{n} select tf32", lambda: est_kernel.select_blocks(*sel_args), r)
        timed(f"{n} select ieee", lambda: est_kernel.select_blocks(*sel_args, precise=True), r)
        # --- attention kernel configurations
        dense_first = n <= 65536
        for density in (0.1, 1.0):
            mask = realistic_mask(hq, n, density, gen)
            cnt, idx = ref.indices_from_block_mask(mask)
            out = torch.empty(1, n, hq, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            expected = None
            names = list(ATTN)
            if density == 1.0 and not dense_first:  # 128K dense: only the three best at 32K dense
                prev = res.get(str(args.lengths[0]), {})
                names = sorted(names, key=lambda nm: prev.get(f"{args.lengths[0]} attn {nm} d1.0") or 1e9)[:2]
            for name in names:
                tiles = ATTN[name]
                ms = timed(f"{n} attn {name} d{density}", lambda: block_sparse_attention(q, k, v, cnt, idx, BS, out=out, tiles=tiles),
                           r, **(big if density == 1.0 else {}))
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
