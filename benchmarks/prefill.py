"""End-to-end prefill of the real Qwen2.5-VL-7B / Qwen3-VL-8B text decoders (shipped configs, random
weights, bf16) on video-shaped inputs of 16K-128K visual tokens, on a CUDA GPU.

One forward pass of the language model (no generation, last-position logits only) over a prompt
of text + video tokens with MRoPE (t, h, w) positions laid out as Qwen-VL lays out a video. Modes:
- dense-cudnn / dense-flash: SDPA pinned to one backend (the faster is the baseline)
- prism@0.93: Prism with the video preset (on random weights attention is flat, so density is high)
- density 0.1 / 0.25: the Prism kernels with a fixed-density block mask (sink + diagonal + stripes
  + random blocks) in every layer, i.e. what a given density costs inside the model
- no-attention: attention replaced by a copy of V, giving the cost of everything but attention.
Time (median of 3 after a warm-up) and peak GPU memory.

    python -m benchmarks.prefill                     # both models: benchmarks/results/prefill-<device>.{json,md,png}
    python -m benchmarks.prefill --models Qwen/Qwen3-VL-8B-Instruct --tokens 131072 --merge   # update those rows only
    python -m benchmarks.prefill --redraw benchmarks/results/prefill-h100-80gb-hbm3.json     # table + plot from a JSON
"""
from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from benchmarks.common import (
    Results,
    describe_runs,
    fixed_density_selection,
    model_panels,
    register_benchmark_attentions,
    run_info,
    save_figure,
)
from prism_mm import PrismConfig
from prism_mm.models import load_model

MODELS = ["Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"]
TEXT_BEFORE, TEXT_AFTER = 200, 50
BS = 128


def video_prompt(config, visual_tokens: int, device):
    """input embeddings + 3D MRoPE positions for TEXT_BEFORE text tokens, a video of about
    `visual_tokens` tokens (frames of 32x32 merged patches) and TEXT_AFTER text tokens."""
    tcfg = config.get_text_config()
    per_frame = 32 * 32
    frames = max(1, visual_tokens // per_frame)
    n_vis = frames * per_frame
    n = TEXT_BEFORE + n_vis + TEXT_AFTER
    pos = torch.empty(3, 1, n, dtype=torch.long)
    pos[:, 0, :TEXT_BEFORE] = torch.arange(TEXT_BEFORE)
    t = torch.arange(frames).repeat_interleave(per_frame) * 2  # temporal id advances per temporal patch
    hw = torch.arange(per_frame)
    base = TEXT_BEFORE
    pos[0, 0, base:base + n_vis] = base + t
    pos[1, 0, base:base + n_vis] = base + (hw // 32).repeat(frames)
    pos[2, 0, base:base + n_vis] = base + (hw % 32).repeat(frames)
    after = int(pos[:, 0, base:base + n_vis].max()) + 1
    pos[:, 0, base + n_vis:] = after + torch.arange(TEXT_AFTER)
    if config.model_type == "qwen3_vl":  # Qwen3-VL text models take [4, B, L] (text positions first)
        pos = torch.cat([torch.arange(n)[None, None], pos], 0)
    embeds = torch.randn(1, n, tcfg.hidden_size, device=device, dtype=torch.bfloat16) * 0.02
    return embeds, pos.to(device), n_vis


def timed_forward(lm, embeds, pos, reps: int = 3):
    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(reps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            lm(inputs_embeds=embeds, position_ids=pos, use_cache=False)
        torch.cuda.synchronize()
        if i:  # first run is the warm-up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def measure(name: str, tokens: list[int], selections: dict) -> list[dict]:
    """Every mode at every length for one model (loaded here with random weights; freed once this returns)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device="cuda").manual_seed(0)  # the fixed-density masks, per model as in a run of one model
    model, _ = load_model(name, attn="prism", prism=PrismConfig.video(), dtype="bfloat16", device_map="cuda",
                          random_weights=True)
    lm = model.model.language_model
    heads = model.config.get_text_config().num_attention_heads
    rows = []
    for target in tqdm(tokens, desc=name.split("/")[-1]):
        embeds, pos, n_vis = video_prompt(model.config, target, "cuda")
        n = embeds.shape[1]
        base = {"model": name, "visual_tokens": n_vis, "tokens": n, "device": torch.cuda.get_device_name()}

        def run(mode, attn, backend=None):
            model.set_attn_implementation({"text_config": attn})
            if backend is None:
                t, mem = timed_forward(lm, embeds, pos)
            else:
                with sdpa_kernel(backend):
                    t, mem = timed_forward(lm, embeds, pos)
            row = {**base, "mode": mode, "seconds": t, "peak_gib": mem}
            if attn == "prism":
                row["mean_density"] = model.prism_stats.mean_density
            rows.append(row)
            print(row, flush=True)
            return t

        dense = min(run("dense-cudnn", "sdpa", SDPBackend.CUDNN_ATTENTION), run("dense-flash", "sdpa", SDPBackend.FLASH_ATTENTION))
        rest = run("no-attention", "no_attention")
        run("prism@0.93", "prism")
        for density in (0.1, 0.25):
            selections[(heads, n)] = fixed_density_selection(heads, n, density, gen, BS)
            run(f"density {density}", "prism_fixed")
        for r in rows:
            if r["tokens"] == n:
                r["speedup_vs_dense"] = dense / r["seconds"]
                r["attention_share_dense"] = (dense - rest) / dense
        torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, help="shipped model names (random weights from their config)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768, 65536, 131072], help="visual tokens")
    started = RESULTS_FILES.parse_gpu_run(ap)
    if started is None:
        return
    args, dev, base = started
    run = run_info(transformers=transformers.__version__)
    selections: dict = {}
    register_benchmark_attentions(selections)
    rows = []
    for name in args.models:
        rows += measure(name, args.tokens, selections)
        gc.collect()
        torch.cuda.empty_cache()
        RESULTS_FILES.save({"device": dev}, run, rows, args.out, dev, base, quiet=True)
    RESULTS_FILES.save({"device": dev}, run, rows, args.out, dev, base)


def table(data: dict) -> list[str]:
    lines = [f"# Prefill of Qwen-VL text decoders (random weights, bf16) on {data['meta']['device']}", "",
             ("Text decoder forward over text + video tokens (MRoPE video positions), last-position logits only. "
              "Median of 3 after a warm-up. Speed-up against the faster dense SDPA backend. Runs (the model and "
              "visual tokens each measured):"), "", *describe_runs(data["meta"]), "",
             "| model | visual tokens | mode | seconds | speed-up vs dense | mean density | peak GiB | dense attention share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        dens = f"{r['mean_density']:.3f}" if r.get("mean_density") is not None else ""
        lines.append(f"| {r['model'].split('/')[-1]} | {r['visual_tokens']} | {r['mode']} | {r['seconds']:.3f} | "
                     f"{r['speedup_vs_dense']:.2f} | {dens} | {r['peak_gib']:.1f} | {r['attention_share_dense']:.2f} |")
    return lines


def plot(data: dict, path: Path) -> None:
    """Per model: speed-up over dense vs visual tokens, per mode, with the bound the attention share allows."""
    rows = data["rows"]
    fig, panels = model_panels(rows, 6, 4)
    for ax, model in panels:
        mine = [r for r in rows if r["model"] == model]
        for mode, style in (("density 0.1", "o-"), ("density 0.25", "s-"), ("prism@0.93", "^-"), ("dense-flash", "x:")):
            pts = sorted((r["visual_tokens"], r["speedup_vs_dense"]) for r in mine if r["mode"] == mode)
            if pts:
                ax.plot([t / 1024 for t, _ in pts], [s for _, s in pts], style, label=mode)
        for density, color in ((0.1, "tab:blue"), (0.25, "tab:orange")):
            pts = sorted({(r["visual_tokens"], r["attention_share_dense"]) for r in mine})
            bound = [1 / (1 - a + a * density) for _, a in pts]
            ax.plot([t / 1024 for t, _ in pts], bound, "--", color=color, alpha=0.5, label=f"bound at {density}")
        ax.axhline(1, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="visual tokens (K)", ylabel="prefill speed-up vs dense SDPA (cuDNN)",
               title=f"{model.split('/')[-1]} on {data['meta']['device']}")
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


RESULTS_FILES = Results("prefill", key=lambda r: (r["model"], r["visual_tokens"]), table=table, plot=plot)

if __name__ == "__main__":
    main()
