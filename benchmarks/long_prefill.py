"""A very long video in bounded memory: chunked prefill of Qwen2.5-VL-7B (shipped config, random weights, bf16)
at up to a million visual tokens on one GPU (an H200's 141 GB), Prism against dense.

The prompt: text + a synthetic video of 32 x 56 patches per frame (448 visual tokens per temporal patch), pixels
made on the GPU. prism_mm.pipelines.prefill.chunked_prefill runs the vision tower --vision-chunk-frames temporal
patches at a time (prism_mm.vision's attention) and the decoder --chunk-tokens queries at a time against the
KV cache, with the Prism sparse kernel at a fixed --density (sink, diagonal and random causal blocks of each
chunk: random weights give flat attention, which would select nearly dense). Measured: vision tower, decoder,
first token, peak memory.
Dense: not run (a dense decoder prefill of 1M tokens takes minutes, and transformers' SDPA path builds a
[chunk, prompt] bool mask per chunk, 34 GB at 32K x 1M), so dense is extrapolated and the method written down:
dense = measured Prism run - 28 layers x (Prism attention per layer) + 28 layers x (dense attention per layer),
both per-layer attention times measured in the same run on random q/k/v of the model's shape over the whole
causal prompt (SDPA cuDNN for dense; the Prism kernel at --density for Prism).

    python -m benchmarks.long_prefill --visual-tokens 1048576          # benchmarks/results/long_prefill-<device>.*
    python -m benchmarks.long_prefill --smoke --out /tmp/lp            # tiny model on the CPU: the code path only
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from benchmarks.common import Results, describe_runs, pyplot, run_info, save_figure, sdpa_runner
from prism_mm import PrismConfig
from prism_mm.kernels import ops as kernel_ops
from prism_mm.kernels.blocks import BlockSelection, causal_block_mask, query_block_key_bounds
from prism_mm.models import enable_prism, load_model, set_attention
from prism_mm.pipelines.prefill import ChunkConfig, chunked_prefill
from prism_mm.testing.tiny import build_tiny_model, video_inputs

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
BS = 128


def random_causal_selection(heads: int, q_len: int, kv_len: int, density: float, gen, block_size: int, device):
    """Each causally visible key block with probability `density`, plus the sink and the diagonal blocks."""
    valid = causal_block_mask(q_len, kv_len, block_size, device)
    mask = (torch.rand(1, heads, *valid.shape, generator=gen, device=device) < density) & valid
    first, last = query_block_key_bounds(q_len, kv_len, block_size, device)
    rows = torch.arange(first.numel(), device=device)
    mask[..., rows, first] = True
    mask[..., rows, last] = True
    mask[..., 0] = True
    return BlockSelection.from_mask(mask, block_size, q_len, kv_len)


def register_fixed_chunk_attention(density: float, gen, block_size: int) -> None:
    """'prism_chunk_fixed': the Prism sparse kernel on a fresh random selection of `density` for each call (any
    q_len <= kv_len), with the Prism mask function (no [q, kv] mask for unpadded prompts)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from prism_mm.attention import prism_mask_function

    def fixed(module, query, key, value, attention_mask, scaling=None, **kw):
        b, h, q_len, d = query.shape
        sel = random_causal_selection(h, q_len, key.shape[2], density, gen, block_size, query.device)
        out = torch.empty(b, q_len, h, d, device=query.device, dtype=query.dtype)
        kernel_ops("auto", query.device).block_sparse_attention(query, key, value, sel, scaling, out.transpose(1, 2))
        return out, None

    AttentionInterface.register("prism_chunk_fixed", fixed)
    AttentionMaskInterface.register("prism_chunk_fixed", prism_mask_function())


def attention_per_layer(config, n: int, density: float, gen, block_size: int, device) -> dict:
    """Seconds of one decoder layer's attention over the whole causal prompt of n tokens: dense SDPA (cuDNN on
    CUDA) and the Prism kernel at `density`, on random q/k/v of the model's head shape."""
    tcfg = config.get_text_config()
    hq, hkv = tcfg.num_attention_heads, tcfg.num_key_value_heads
    d = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // hq
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    q = torch.randn(1, hq, n, d, device=device, dtype=dtype)
    k, v = (torch.randn(1, hkv, n, d, device=device, dtype=dtype) for _ in range(2))
    heads = [random_causal_selection(1, n, n, density, gen, block_size, device) for _ in range(hq)]  # bounded memory
    sel = BlockSelection(torch.cat([h.kv_num_blocks for h in heads], 1), torch.cat([h.kv_indices for h in heads], 1),
                         block_size, n, n)
    del heads
    ops = kernel_ops("auto", device)

    def timed(fn) -> float:
        fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    prism_s = timed(lambda: ops.block_sparse_attention(q, k, v, sel))
    density_read = float(sel.density().mean())
    if torch.device(device).type == "cuda":
        dense = sdpa_runner(q, k, v, "cudnn")  # K/V expanded to the query heads outside the timing
    else:
        def dense():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return {"dense_s": timed(dense), "prism_s": prism_s, "selection_density": density_read}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visual-tokens", type=int, default=1 << 20)
    ap.add_argument("--chunk-tokens", type=int, default=32768)
    ap.add_argument("--vision-chunk-frames", type=int, default=64, help="temporal patches per vision-tower call")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU (a code check)")
    args = RESULTS_FILES.parse(ap, merge=False)
    if args is None:
        return
    if args.smoke:
        device, dev, bs = torch.device("cpu"), None, 16
        model = build_tiny_model("qwen2_5_vl")
        enable_prism(model, PrismConfig(block_size=bs, min_sparse_len=0))
        frame, tokens = (8, 12), min(args.visual_tokens, 240)
        args.chunk_tokens, args.vision_chunk_frames = min(args.chunk_tokens, 64), min(args.vision_chunk_frames, 3)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks.long_prefill needs a CUDA GPU (or --smoke)")
        device, dev, bs = torch.device("cuda"), torch.cuda.get_device_name(), BS
        model, _ = load_model(MODEL, attn="prism", dtype="bfloat16", device_map="cuda", random_weights=True)
        frame, tokens = (32, 56), args.visual_tokens
    gen = torch.Generator(device=device).manual_seed(0)
    vcfg = model.config.vision_config
    per_t = frame[0] * frame[1] // vcfg.spatial_merge_size**2
    t = math.ceil(tokens / per_t)
    inputs = video_inputs(model.config, frames=t * vcfg.temporal_patch_size, grid=frame[0], grid_w=frame[1],
                          text_before=200, text_after=50, pixel_device=device, pixel_dtype=model.dtype)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    n = inputs["input_ids"].shape[1]
    visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
    print(f"{visual} visual tokens, {n} prompt tokens, pixels {tuple(inputs['pixel_values_videos'].shape)}", flush=True)
    register_fixed_chunk_attention(args.density, gen, bs)
    set_attention(model, "dense", "varlen")
    model.set_attn_implementation({"text_config": "prism_chunk_fixed"})
    chunks = ChunkConfig(args.chunk_tokens, args.vision_chunk_frames)
    warm = video_inputs(model.config, frames=4 * vcfg.temporal_patch_size, grid=frame[0], grid_w=frame[1],
                        pixel_device=device, pixel_dtype=model.dtype)
    chunked_prefill(model, {k: v.to(device) for k, v in warm.items()}, ChunkConfig(max(16, per_t), 2))  # compiles
    del warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    state = chunked_prefill(model, inputs, chunks)
    sync(device)
    prefill = time.perf_counter() - t0
    vision = model.prism_stats.vision_seconds or 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    first = int(state.logits.argmax(-1))
    del state, inputs
    layers = model.config.get_text_config().num_hidden_layers
    per_layer = attention_per_layer(model.config, n, args.density, gen, bs, device)
    dense = prefill + layers * (per_layer["dense_s"] - per_layer["prism_s"])
    row = {"model": MODEL if not args.smoke else "tiny-qwen2.5-vl", "visual_tokens": visual, "tokens": n,
           "chunk_tokens": args.chunk_tokens, "vision_chunk_frames": args.vision_chunk_frames, "density": args.density,
           "prefill_s": prefill, "vision_s": vision, "decoder_s": prefill - vision, "peak_gib": peak,
           "first_token_id": first, "layers": layers, **{f"attention_layer_{k}": v for k, v in per_layer.items()},
           "dense_prefill_s_extrapolated": dense, "speedup_vs_dense_extrapolated": dense / prefill}
    print(row, flush=True)
    RESULTS_FILES.save({"device": dev or "cpu"}, run_info(transformers=transformers.__version__), [row], args.out, dev)


def table(data: dict) -> list[str]:
    lines = [f"# Chunked prefill of a very long video on {data['meta']['device']} (random weights, bf16)", "",
             "Measured: the Prism run (vision tower in frame chunks with batched varlen attention, decoder in query "
             "chunks on the Prism kernel at a fixed density). Dense is extrapolated: the Prism run minus "
             "layers x Prism attention per layer plus layers x dense SDPA (cuDNN) attention per layer, both timed "
             "over the whole causal prompt on random q/k/v in the same run. Runs:", "", *describe_runs(data["meta"]),
             "", "| model | visual tokens | chunk | density | vision s | decoder s | prefill s | peak GiB | "
             "attention/layer dense s | attention/layer Prism s | dense prefill s (extrapolated) | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else ""
        lines.append(f"| {r['model'].split('/')[-1]} | {r['visual_tokens']} | {r['chunk_tokens']} | {r['density']} | "
                     f"{r['vision_s']:.1f} | {r['decoder_s']:.1f} | {r['prefill_s']:.1f} | {peak} | "
                     f"{r['attention_layer_dense_s']:.2f} | {r['attention_layer_prism_s']:.2f} | "
                     f"{r['dense_prefill_s_extrapolated']:.1f} | {r['speedup_vs_dense_extrapolated']:.2f}x |")
    return lines


def plot(data: dict, path: Path) -> None:
    """Stacked bars: Prism measured (vision, decoder) and dense extrapolated (vision, decoder)."""
    plt = pyplot()
    r = data["rows"][-1]
    fig, ax = plt.subplots(figsize=(5, 4))
    dense_decoder = r["dense_prefill_s_extrapolated"] - r["vision_s"]
    for x, decoder, label in ((0, r["decoder_s"], f"Prism {r['density']} (measured)"),
                              (1, dense_decoder, "dense (extrapolated)")):
        ax.bar(x, r["vision_s"], color="tab:orange", label="vision tower" if x == 0 else None)
        ax.bar(x, decoder, bottom=r["vision_s"], color="tab:blue" if x == 0 else "tab:gray",
               label="decoder prefill" if x == 0 else "decoder prefill (extrapolated)")
    ax.set_xticks([0, 1], [f"Prism {r['density']}", "dense"])
    ax.set(ylabel="seconds", title=f"{r['visual_tokens'] / 2**20:.2f}M visual tokens on {data['meta']['device']}")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


RESULTS_FILES = Results("long_prefill", key=lambda r: (r["model"], r["density"], r["visual_tokens"]), table=table,
                        plot=plot)

if __name__ == "__main__":
    main()
