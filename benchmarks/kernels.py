"""Kernel benchmark on a CUDA GPU: Prism block-sparse attention and estimation vs dense SDPA
(cuDNN, flash) and FlexAttention on the very same block mask, for the attention shapes of Qwen2.5-VL-7B
(28 query / 4 KV heads) and Qwen3-VL-8B (32 / 8), head_dim 128, block 128.

    python -m benchmarks.kernels                          # both shapes, 16K-256K: benchmarks/results/kernels-<device>.{json,md,png}
    python -m benchmarks.kernels --lengths 32768 131072   # some lengths only
    python -m benchmarks.kernels --models qwen3-vl-8b --merge   # replace those rows in the existing file, keep the rest
    python -m benchmarks.kernels --redraw benchmarks/results/kernels-h100-80gb-hbm3.json   # table + plot from a JSON

Times are medians of triton.testing.do_bench (CUDA events) after warm-up; sparse rows take the median over
--masks random block masks per density (input sets). TFLOP/s count only the
computed causal (query, key) pairs: 4 * head_dim * pairs * heads.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import (
    Results,
    bench,
    describe_runs,
    flex_runner,
    pyplot,
    realistic_mask,
    run_info,
    save_figure,
    sdpa_runner,
)
from prism_mm import PrismConfig, RopeSpec
from prism_mm.kernels.block_sparse import block_sparse_attention
from prism_mm.kernels.blocks import BlockSelection, causal_block_mask
from prism_mm.selection import estimate

SHAPES = {"qwen2.5-vl-7b": (28, 4), "qwen3-vl-8b": (32, 8)}
LENGTHS = [16384, 32768, 65536, 131072, 262144]
BS = 128
D = 128


def computed_pairs(mask):
    """(query, key) token pairs computed: full blocks bs^2, diagonal blocks bs(bs+1)/2."""
    nb = mask.shape[-1]
    diag = mask[..., torch.arange(nb), torch.arange(nb)].sum().item()
    return (mask.sum().item() - diag) * BS * BS + diag * BS * (BS + 1) // 2


def time_mask(q, k, v, mask, with_flex: bool) -> dict:
    """Prism's sparse kernel (and FlexAttention) on one block mask: ms, real density, computed pairs."""
    hq, n = q.shape[1], q.shape[2]
    selection = BlockSelection.from_mask(mask, BS, n, n)
    res = {"density": mask.sum().item() / (hq * causal_block_mask(n, n, BS).sum().item()),
           "pairs": computed_pairs(mask)}
    out = torch.empty(1, n, hq, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    res["prism_ms"] = bench(lambda: block_sparse_attention(q, k, v, selection, out=out))
    if with_flex:
        try:
            res["flex_ms"] = bench(flex_runner(q, k, v, mask, BS))
        except Exception as e:  # noqa: BLE001 - report and continue
            print(f"flex failed at {n}: {type(e).__name__}: {e}")
    return res


def measure(name, hq, hkv, n, densities, masks, with_flex, gen) -> list[dict]:
    """Every row of one (shape, length): dense SDPA (cuDNN, flash), estimation, Prism sparse (and Flex) per density."""
    q = torch.randn(1, hq, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
    dense_pairs = n * (n + 1) // 2
    base = {"model": name, "hq": hq, "hkv": hkv, "n": n}
    rows, times = [], {}
    for be in ("cudnn", "flash"):
        try:
            times[be] = bench(sdpa_runner(q, k, v, be))
            rows.append({**base, "method": f"sdpa_{be}", "density": 1.0, "ms": times[be],
                         "tflops": 4 * D * dense_pairs * hq / times[be] / 1e9})
        except RuntimeError as e:
            print(f"sdpa {be} failed at {n}: {e}")
    cudnn = times.get("cudnn") or times.get("flash")
    # Estimation alone (pool + calibrated dual-band scores + top-p + index lists).
    cfg = PrismConfig.video(min_sparse_len=0)
    bands = RopeSpec(head_dim=D, theta=1e6, mrope_section=(16, 24, 24)).bands(*cfg.band_dims(D))
    t_est = bench(lambda: estimate(q, k, cfg, bands))
    rows.append({**base, "method": "prism_estimation", "ms": t_est, "vs_cudnn_pct": 100 * t_est / cudnn})
    # The same pooled scores under method="cutoff" (one cutoff on the mean band probability, no top-p search).
    cut = replace(cfg, method="cutoff")
    t_cut = bench(lambda: estimate(q, k, cut, bands))
    rows.append({**base, "method": "cutoff_estimation", "ms": t_cut, "vs_cudnn_pct": 100 * t_cut / cudnn})
    for density in densities:
        # Several masks (input sets) per density: the median over them is reported, each one is kept.
        per_mask = []
        for _ in range(masks):
            mask = realistic_mask(hq, n, density, gen, BS)
            per_mask.append(time_mask(q, k, v, mask, with_flex))
            del mask
        t = statistics.median(m["prism_ms"] for m in per_mask)
        dens = statistics.mean(m["density"] for m in per_mask)
        pairs = statistics.mean(m["pairs"] for m in per_mask)
        rows.append({**base, "method": "prism_sparse", "density": dens, "ms": t,
                     "tflops": 4 * D * pairs / t / 1e9, "speedup_vs_cudnn": cudnn / t,
                     "e2e_ms": t + t_est, "e2e_speedup_vs_cudnn": cudnn / (t + t_est),
                     "per_mask_ms": [m["prism_ms"] for m in per_mask]})
        flex = [m["flex_ms"] for m in per_mask if m.get("flex_ms")]
        if len(flex) == len(per_mask):
            tf = statistics.median(flex)
            rows.append({**base, "method": "flex", "density": dens, "ms": tf,
                         "tflops": 4 * D * pairs / tf / 1e9, "speedup_vs_cudnn": cudnn / tf,
                         "prism_speedup_vs_flex": tf / t, "per_mask_ms": flex,
                         "per_mask_prism_speedup_vs_flex": [m["flex_ms"] / m["prism_ms"] for m in per_mask]})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=LENGTHS, metavar="TOKENS")
    ap.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES), help="attention shapes")
    ap.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1, 0.05])
    ap.add_argument("--masks", type=int, default=3, help="random block masks (input sets) per density")
    ap.add_argument("--no-flex", action="store_true")
    started = RESULTS_FILES.parse_gpu_run(ap)
    if started is None:
        return
    args, dev, base = started
    gen = torch.Generator(device="cuda").manual_seed(0)
    meta = {"device": dev, "block_size": BS, "head_dim": D, "dtype": "bfloat16"}
    run = run_info(masks=args.masks)
    rows = []
    for name, n in tqdm([(name, n) for name in args.models for n in args.lengths], desc="shapes"):
        hq, hkv = SHAPES[name]
        if hq * n * D * 2 * 6 > torch.cuda.mem_get_info()[0]:
            print(f"skip {name} {n}: not enough GPU memory")
            continue
        rows += measure(name, hq, hkv, n, args.densities, args.masks, not args.no_flex, gen)
        torch.cuda.empty_cache()
        RESULTS_FILES.save(meta, run, rows, args.out, dev, base, quiet=True)  # partial results survive a time-out
    RESULTS_FILES.save(meta, run, rows, args.out, dev, base)


def table(data: dict) -> list[str]:
    meta = data["meta"]
    lines = [f"# Kernel benchmark on {meta['device']}", "",
             (f"bf16, head_dim {meta['head_dim']}, block {meta['block_size']}, batch 1. Median of do_bench; sparse rows: "
              "median over the run's random masks per density (per-mask times in the JSON). TFLOP/s over computed "
              "causal blocks. Runs (masks per density; the model shapes and lengths each measured):"), "",
             *describe_runs(meta), "",
             "| model | tokens | method | density | ms | TFLOP/s | x cuDNN dense | x FlexAttention |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        ratio = r.get("speedup_vs_cudnn")
        if r["method"] in ("prism_estimation", "cutoff_estimation"):
            ratio_s = f"{r['vs_cudnn_pct']:.2f}% of dense"
        else:
            ratio_s = f"{ratio:.2f}" if ratio else "1.00" if r["method"] == "sdpa_cudnn" else ""
        flex = f"{r['prism_speedup_vs_flex']:.2f}" if "prism_speedup_vs_flex" in r else ""
        dens = f"{r['density']:.3f}" if "density" in r else ""
        tfl = f"{r['tflops']:.0f}" if "tflops" in r else ""
        lines.append(f"| {r['model']} | {r['n'] // 1024}K | {r['method']} | {dens} | {r['ms']:.3f} | {tfl} | {ratio_s} | {flex} |")
    return lines


def plot(data: dict, path: Path) -> None:
    """Per model, against density, one line per length: Prism's speed-up over cuDNN dense (kernel, and with the
    estimation), its speed-up over FlexAttention on the same masks, and its time over density x its own
    density-1.0 time (issue #3's "time follows density" bound: 1.25)."""
    plt = pyplot()
    rows, meta = data["rows"], data["meta"]
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 4 * len(models)), squeeze=False)
    for (ax_dense, ax_flex, ax_follow), model in zip(axes, models):
        for i, n in enumerate(sorted({r["n"] for r in rows if r["model"] == model})):
            mine = sorted((r["density"], r) for r in rows if r["model"] == model and r["n"] == n and r["method"] == "prism_sparse")
            flex = sorted((r["density"], r["prism_speedup_vs_flex"]) for r in rows
                          if r["model"] == model and r["n"] == n and r["method"] == "flex")
            if not mine:
                continue
            style, label = {"color": f"C{i}"}, f"{n // 1024}K"
            dens = [d for d, _ in mine]
            ax_dense.plot(dens, [r["speedup_vs_cudnn"] for _, r in mine], "o-", label=label, **style)
            ax_dense.plot(dens, [r["e2e_speedup_vs_cudnn"] for _, r in mine], ":", **style)
            if flex:
                ax_flex.plot([d for d, _ in flex], [x for _, x in flex], "o-", label=label, **style)
            one = [r["ms"] for d, r in mine if d > 0.99]
            if one:
                ax_follow.plot(dens[:-1], [r["ms"] / (d * one[0]) for d, r in mine[:-1]], "o-", label=label, **style)
        ax_dense.axhline(1, color="gray", lw=0.8)
        ax_dense.set(xscale="log", yscale="log", xlabel="block density", ylabel="x SDPA cuDNN dense",
                     title=f"{model}: kernel (o-), with estimation (:)")
        ax_flex.axhline(1.2, color="red", lw=0.8, ls="--", label="1.2")
        ax_flex.set(xscale="log", xlabel="block density", ylabel="x FlexAttention, same masks", title=f"{model}: vs FlexAttention")
        ax_follow.axhline(1.25, color="red", lw=0.8, ls="--", label="bound 1.25")
        ax_follow.set(xscale="log", xlabel="block density", ylabel="time / (density x time at density 1.0)",
                      title=f"{model}: does time follow density?")
        for ax in (ax_dense, ax_flex, ax_follow):
            ax.legend(fontsize=7)
    fig.suptitle(f"{meta['device']}, bf16, head_dim {meta['head_dim']}, block {meta['block_size']}, batch 1", fontsize=10)
    save_figure(fig, path, dpi=100)


RESULTS_FILES = Results("kernels", key=lambda r: (r["model"], r["n"]), table=table, plot=plot)

if __name__ == "__main__":
    main()
