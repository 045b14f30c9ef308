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

    python -m benchmarks.prefill --model Qwen/Qwen2.5-VL-7B-Instruct --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.kernels import realistic_mask
from prism_mm import PrismConfig
from prism_mm.kernels import reference as ref
from prism_mm.models import load_model

TEXT_BEFORE, TEXT_AFTER = 200, 50


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


def register_benchmark_attentions(masks: dict):
    """'prism_fixed' (the Prism kernel on a fixed-density mask) and 'no_attention' (a copy of V)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from prism_mm.kernels.block_sparse import block_sparse_attention

    def fixed(module, query, key, value, attention_mask, scaling=None, **kw):
        b, h, n, d = query.shape
        cnt, idx = masks[(h, n)]
        out = torch.empty(b, n, h, d, device=query.device, dtype=query.dtype)
        block_sparse_attention(query, key, value, cnt, idx, 128, scaling, out=out.transpose(1, 2))
        return out, None

    def none(module, query, key, value, attention_mask, **kw):
        group = query.shape[1] // value.shape[1]
        return value.repeat_interleave(group, 1).transpose(1, 2), None

    for name, fn in (("prism_fixed", fixed), ("no_attention", none)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct")
    ap.add_argument("--tokens", type=int, nargs="*", default=[16384, 32768, 65536, 131072])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, _ = load_model(args.model, attn="prism", prism=PrismConfig.video(), dtype="bfloat16", device_map="cuda",
                          random_weights=True)
    lm = model.model.language_model
    text_cfg = model.config.get_text_config()
    masks: dict = {}
    register_benchmark_attentions(masks)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for target in tqdm(args.tokens, desc="lengths"):
        embeds, pos, n_vis = video_prompt(model.config, target, "cuda")
        n = embeds.shape[1]
        base = {"model": args.model, "visual_tokens": n_vis, "tokens": n, "device": torch.cuda.get_device_name()}

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
            mask = realistic_mask(text_cfg.num_attention_heads, ((n + 127) // 128) * 128, density, gen)
            nb = (n + 127) // 128
            mask = mask[..., :nb, :nb] & ref.causal_block_mask(n, n, 128, "cuda")
            masks[(text_cfg.num_attention_heads, n)] = ref.indices_from_block_mask(mask)
            run(f"density {density}", "prism_fixed")
        for r in rows:
            if r["tokens"] == n:
                r["speedup_vs_dense"] = dense / r["seconds"]
                r["attention_share_dense"] = (dense - rest) / dense
        torch.cuda.empty_cache()
    model.set_attn_implementation({"text_config": "prism"})
    write(rows, args.out, args.model)


def write(rows, out: Path, model_name: str):
    out.mkdir(parents=True, exist_ok=True)
    tag = model_name.split("/")[-1].lower() + "-" + rows[0]["device"].replace("NVIDIA ", "").replace(" ", "-").lower()
    (out / f"prefill-{tag}.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# Prefill of {model_name} (random weights, bf16) on {rows[0]['device']}", "",
             "Text decoder forward over text + video tokens (MRoPE video positions), last-position logits only. "
             "Median of 3 after a warm-up. Speed-up against the faster dense SDPA backend.", "",
             "| visual tokens | mode | seconds | speed-up vs dense | mean density | peak GiB | dense attention share |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        dens = f"{r['mean_density']:.3f}" if r.get("mean_density") is not None else ""
        lines.append(f"| {r['visual_tokens']} | {r['mode']} | {r['seconds']:.3f} | {r['speedup_vs_dense']:.2f} | {dens} | "
                     f"{r['peak_gib']:.1f} | {r['attention_share_dense']:.2f} |")
    (out / f"prefill-{tag}.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / f"prefill-{tag}.png", model_name)
    print("\n".join(lines))


def plot(rows, path: Path, model_name: str) -> None:
    """Speed-up over dense vs visual tokens, per mode, with the bound the attention share allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in (("density 0.1", "o-"), ("density 0.25", "s-"), ("prism@0.93", "^-"), ("dense-flash", "x:")):
        pts = sorted((r["visual_tokens"], r["speedup_vs_dense"]) for r in rows if r["mode"] == mode)
        if pts:
            ax.plot([t / 1024 for t, _ in pts], [s for _, s in pts], style, label=mode)
    for density, color in ((0.1, "tab:blue"), (0.25, "tab:orange")):
        pts = sorted({(r["visual_tokens"], r["attention_share_dense"]) for r in rows})
        bound = [1 / (1 - a + a * density) for _, a in pts]
        ax.plot([t / 1024 for t, _ in pts], bound, "--", color=color, alpha=0.5, label=f"bound at {density}")
    ax.axhline(1, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="visual tokens (K)", ylabel="prefill speed-up vs dense SDPA (cuDNN)",
           title=f"{model_name.split('/')[-1]} on {rows[0]['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
