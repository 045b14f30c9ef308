"""Kernel benchmark on a CUDA GPU: Prism block-sparse attention and estimation vs dense SDPA
(cuDNN, flash) and FlexAttention on the very same block mask.

    python -m benchmarks.kernels                 # full run, writes benchmarks/results/kernels-<device>.{json,md}
    python -m benchmarks.kernels --quick         # 32K and 128K, Qwen2.5-VL shape only

Times are medians of triton.testing.do_bench (CUDA events) after warm-up; sparse rows take the median over
--masks random block masks per density (input sets). TFLOP/s count only the
computed causal (query, key) pairs: 4 * head_dim * pairs * heads.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from tqdm import tqdm

from prism_mm import PrismConfig, RopeLayout
from prism_mm.kernels import reference as ref
from prism_mm.kernels.block_sparse import block_sparse_attention
from prism_mm.selection import estimate

SHAPES = {"qwen2.5-vl-7b": (28, 4), "qwen3-vl-8b": (32, 8)}
BS = 128
D = 128


def realistic_mask(hq, n, density, gen, device="cuda", stripes=4):
    """Sink + diagonal + a few vertical stripes per head + random blocks, to `density` of the causal blocks."""
    nb = n // BS
    valid = ref.causal_block_mask(n, n, BS, device)[None]
    mask = torch.zeros(hq, nb, nb, dtype=torch.bool, device=device)
    mask[..., 0] = True
    idx = torch.arange(nb, device=device)
    mask[:, idx, idx] = True
    cols = torch.randint(0, nb, (hq, stripes), generator=gen, device=device)
    mask.scatter_(2, cols[:, None, :].expand(hq, nb, stripes), True)
    mask &= valid
    total = valid.sum().item()
    need = density * total - mask[0].sum().item()
    free = (valid & ~mask).sum(dim=(1, 2), keepdim=True).float()
    p = (need / free).clamp(0, 1)
    mask |= (torch.rand(mask.shape, generator=gen, device=device) < p) & valid
    if density >= 1.0:
        mask = valid.expand_as(mask).clone()
    return mask[None]


def computed_pairs(mask):
    """(query, key) token pairs computed: full blocks bs^2, diagonal blocks bs(bs+1)/2."""
    nb = mask.shape[-1]
    diag = mask[..., torch.arange(nb), torch.arange(nb)].sum().item()
    return (mask.sum().item() - diag) * BS * BS + diag * BS * (BS + 1) // 2


def time_mask(q, k, v, mask, with_flex: bool) -> dict:
    """Prism's sparse kernel (and FlexAttention) on one block mask: ms, real density, computed pairs."""
    hq, n = q.shape[1], q.shape[2]
    cnt, idx = ref.indices_from_block_mask(mask)
    res = {"density": mask.sum().item() / (hq * ref.causal_block_mask(n, n, BS).sum().item()),
           "pairs": computed_pairs(mask)}
    out = torch.empty(1, n, hq, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    res["prism_ms"] = bench(lambda: block_sparse_attention(q, k, v, cnt, idx, BS, out=out))
    if with_flex:
        try:
            res["flex_ms"] = bench(flex_runner(q, k, v, mask))
        except Exception as e:  # noqa: BLE001 - report and continue
            print(f"flex failed at {n}: {type(e).__name__}: {e}")
    return res


def bench(fn, min_runs=10, max_ms=3000.0):
    """Median of do_bench after warm-up, over at least `min_runs` timed runs (at least 3 for calls that
    take longer than max_ms / min_runs; do_bench's default 100 ms budget would time a 128K call once)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = 1000 * (time.perf_counter() - start)
    rep = max(100.0, min(min_runs * est, max(max_ms, 3 * est)))
    return triton.testing.do_bench(fn, warmup=max(25.0, 2 * est), rep=rep, return_mode="median")


def flex_runner(q, k, v, mask):
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    nb = mask.shape[-1]
    eye = torch.eye(nb, dtype=torch.bool, device=mask.device)
    partial = mask & eye
    full = mask & ~eye
    pc, pi = ref.indices_from_block_mask(partial)
    fc, fi = ref.indices_from_block_mask(full)

    def causal(b, h, qi, ki):
        return qi >= ki

    bm = BlockMask.from_kv_blocks(pc, pi.clamp_min(0), fc, fi.clamp_min(0), BLOCK_SIZE=BS, mask_mod=causal)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(q, k, v, block_mask=bm, enable_gqa=True)


def sdpa_runner(q, k, v, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    group = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # expanded outside the timing

    def run():
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lengths", type=int, nargs="*")
    ap.add_argument("--densities", type=float, nargs="*", default=[1.0, 0.5, 0.25, 0.1, 0.05])
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--masks", type=int, default=3, help="random block masks (input sets) per density")
    ap.add_argument("--models", nargs="*", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--plot-only", type=Path, metavar="JSON", help="redraw the plot of a results JSON and exit")
    args = ap.parse_args()
    if args.plot_only:
        data = json.loads(args.plot_only.read_text())
        plot(data["rows"], data["meta"], args.plot_only.with_suffix(".png"))
        return
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.kernels needs a CUDA GPU")
    dev = torch.cuda.get_device_name()
    lengths = args.lengths or ([32768, 131072] if args.quick else [16384, 32768, 65536, 131072, 262144])
    shapes = {"qwen2.5-vl-7b": SHAPES["qwen2.5-vl-7b"]} if args.quick else {m: SHAPES[m] for m in args.models}
    gen = torch.Generator(device="cuda").manual_seed(0)
    meta = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "block_size": BS, "head_dim": D, "dtype": "bfloat16",
            "suffix": "" if len(shapes) == len(SHAPES) else "-" + "-".join(shapes), "masks": args.masks}
    rows = []
    jobs = [(name, hq, hkv, n) for name, (hq, hkv) in shapes.items() for n in lengths]
    for name, hq, hkv, n in tqdm(jobs, desc="shapes"):
        free = torch.cuda.mem_get_info()[0]
        if hq * n * D * 2 * 6 > free:
            print(f"skip {name} {n}: not enough GPU memory")
            continue
        q = torch.randn(1, hq, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
        dense_pairs = n * (n + 1) // 2
        base = {"model": name, "hq": hq, "hkv": hkv, "n": n}
        times = {}
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
        bands = RopeLayout(head_dim=D, theta=1e6, mrope_section=(16, 24, 24)).bands(*cfg.band_dims(D))
        t_est = bench(lambda: estimate(q, k, cfg, bands))
        rows.append({**base, "method": "prism_estimation", "ms": t_est, "vs_cudnn_pct": 100 * t_est / cudnn})
        for density in args.densities:
            # Several masks (input sets) per density: the median over them is reported, each one is kept.
            per_mask = []
            for _ in range(args.masks):
                mask = realistic_mask(hq, n, density, gen)
                per_mask.append(time_mask(q, k, v, mask, not args.no_flex))
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
        del q, k, v
        torch.cuda.empty_cache()
        write(rows, meta, Path(args.out), quiet=True)  # partial results survive a time-out
    write(rows, meta, Path(args.out))


def write(rows, meta, out_dir: Path, quiet: bool = False):
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = meta["device"].replace("NVIDIA ", "").replace(" ", "-").lower() + meta.get("suffix", "")
    (out_dir / f"kernels-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Kernel benchmark on {meta['device']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, bf16, head_dim {meta['head_dim']}, block {meta['block_size']}, "
             "batch 1. Median of do_bench; sparse rows: median over " + str(meta.get("masks", 1)) + " random masks per density "
             "(per-mask times in the JSON). TFLOP/s over computed causal blocks.", "",
             "| model | tokens | method | density | ms | TFLOP/s | x cuDNN dense | x FlexAttention |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("speedup_vs_cudnn")
        if r["method"] == "prism_estimation":
            ratio_s = f"{r['vs_cudnn_pct']:.2f}% of dense"
        else:
            ratio_s = f"{ratio:.2f}" if ratio else "1.00" if r["method"] == "sdpa_cudnn" else ""
        flex = f"{r['prism_speedup_vs_flex']:.2f}" if "prism_speedup_vs_flex" in r else ""
        dens = f"{r['density']:.3f}" if "density" in r else ""
        tfl = f"{r['tflops']:.0f}" if "tflops" in r else ""
        lines.append(f"| {r['model']} | {r['n'] // 1024}K | {r['method']} | {dens} | {r['ms']:.3f} | {tfl} | {ratio_s} | {flex} |")
    (out_dir / f"kernels-{tag}.md").write_text("\n".join(lines) + "\n")
    plot(rows, meta, out_dir / f"kernels-{tag}.png")
    if not quiet:
        print("\n".join(lines))


def plot(rows, meta, path: Path) -> None:
    """Per model, against density, one line per length: Prism's speed-up over cuDNN dense (kernel, and with the
    estimation), its speed-up over FlexAttention on the same masks, and its time over density x its own
    density-1.0 time (issue #3's "time follows density" bound: 1.25)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 4 * len(models)), squeeze=False)
    for (ax_dense, ax_flex, ax_follow), model in zip(axes, models):
        for i, n in enumerate(sorted({r["n"] for r in rows if r["model"] == model})):
            mine = sorted((r["density"], r) for r in rows if r["model"] == model and r["n"] == n and r["method"] == "prism_sparse")
            flex = sorted((r["density"], r["prism_speedup_vs_flex"]) for r in rows
                          if r["model"] == model and r["n"] == n and r["method"] == "flex")
            if not mine:
                continue
            style, label = dict(color=f"C{i}"), f"{n // 1024}K"
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
