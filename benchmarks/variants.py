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

BEST = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, maxnreg=128, DESC=2)
ATTN = {  # the kernel's remaining launch options; earlier variants, their code and times: benchmarks/NOTES.md
    "host-desc": BEST,
    "device-desc": {**BEST, "DESC": 1},
    "pointers": {**BEST, "DESC": 0},
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


def check_variants(names, results) -> None:
    """Each variant against the PyTorch reference at small odd shapes (GQA, misaligned causal offset,
    random and full selections, bf16): relative error, and every output element written."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    shapes = [(1, 28, 4, 1000, 1000, 128, 128), (2, 8, 2, 777, 1300, 64, 64), (1, 7, 1, 300, 300, 128, 64),
              (2, 8, 2, -777, 1300, 128, 128)]  # negative q_len: q/k/v in transformers' [B, L, H, D] layout
    for name in names:
        try:
            worst = _check_variant(name, shapes, gen)
        except Exception as e:  # noqa: BLE001 - a failing variant is a result too
            print(f"check {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
            worst = None
        results[name] = worst
        if worst is not None:
            print(f"check {name}: worst rel err {worst:.2e} {'OK' if worst < 2e-2 else 'FAILED'}", flush=True)


def _check_variant(name, shapes, gen) -> float:
    worst = 0.0
    for b, hq, hkv, q_len, kv_len, d, bs in shapes:
        blhd, q_len = q_len < 0, abs(q_len)

        def rand(h, n):
            shape = (b, n, h, d) if blhd else (b, h, n, d)
            x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
            return x.transpose(1, 2) if blhd else x

        q, k, v = rand(hq, q_len), rand(hkv, kv_len), rand(hkv, kv_len)
        for density in (1.0, 0.3):
            cnt, idx = ref.random_selection(b, hq, q_len, kv_len, bs, density, "cuda", generator=gen)
            out = torch.full_like(q, float("nan"))
            block_sparse_attention(q, k, v, cnt, idx, bs, out=out, tiles={**ATTN[name], "BLOCK_M": min(128, bs)})
            expected = ref.block_sparse_attention(q.float(), k.float(), v.float(), cnt, idx, bs)
            err = ((out.float() - expected).norm() / expected.norm()).item() if torch.isfinite(out).all() else float("inf")
            worst = max(worst, err)
    return worst


def timed(name, fn, results):
    try:
        ms = bench(fn)
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
    ap.add_argument("--rounds", type=int, default=1, help="time cuDNN and every variant this many times (spread)")
    ap.add_argument("--check", action="store_true", help="first check every variant against the reference")
    args = ap.parse_args()
    hq, hkv = 28, 4
    gen = torch.Generator(device="cuda").manual_seed(0)
    res: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__}
    if args.check:
        check_variants(args.variants, res.setdefault("check", {}))
    for n in args.lengths:
        r = res[str(n)] = {}
        q = torch.randn(1, hq, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
        if args.estimation:
            time_estimation(q, k, n, r)
        masks = {density: realistic_mask(hq, n, density, gen) for density in args.densities}
        # --- attention kernel configurations (registers / spills / shared memory of each compiled variant reported)
        seen: set = set()
        for rnd, density in [(rnd, density) for rnd in range(args.rounds) for density in args.densities]:
            tag = f" r{rnd}" if args.rounds > 1 else ""
            if density == args.densities[0]:
                timed(f"{n} cudnn{tag}", sdpa_runner(q, k, v, "cudnn"), r)
            cnt, idx = ref.indices_from_block_mask(masks[density])
            out = torch.empty(1, n, hq, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            expected = None
            for name in args.variants:
                tiles = ATTN[name]
                ms = timed(f"{n} attn {name} d{density}{tag}", lambda: block_sparse_attention(q, k, v, cnt, idx, BS, out=out, tiles=tiles), r)
                info = compiled_info(seen)
                if info:
                    res.setdefault("compiled", {})[name] = info
                    print(f"  {name}: {info}")
                if ms is not None:
                    got = out[:, :, -256:].float().clone()
                    if expected is None:
                        expected = got
                    r[f"{n} attn {name} d{density}{tag} diff"] = ((got - expected).norm() / expected.norm()).item()
            del cnt, idx, out
        del masks
        del q, k, v
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
