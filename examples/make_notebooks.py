"""Writes the example notebooks (python examples/make_notebooks.py). Edit the cells here, not the .ipynb."""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent

QUICKSTART = [
    ("md", "# prism_mm quickstart: a question about a video, Prism vs dense\n\n"
           "Runs anywhere with the toy random-weight model (`tiny-qwen2.5-vl`, meaningless answers). "
           "For real answers set `MODEL` to `Qwen/Qwen2.5-VL-7B-Instruct` (or a local copy) and `DEVICE` to `cuda`."),
    ("code", "MODEL = \"tiny-qwen2.5-vl\"   # or \"Qwen/Qwen2.5-VL-7B-Instruct\", \"Qwen/Qwen3-VL-8B-Instruct\", a local path\n"
             "DEVICE = None                 # None: cuda if available, else cpu\n"
             "VIDEO = None                  # None: a generated demo clip; or a path to your .mp4"),
    ("code", "import tempfile\nfrom pathlib import Path\n\n"
             "from prism_mm import PrismConfig\n"
             "from prism_mm.testing.clips import make_demo_video\n"
             "from prism_mm.pipelines.video import VideoOptions\n"
             "from prism_mm.pipelines.session import VideoQA, format_report\n\n"
             "video = VIDEO or str(make_demo_video(Path(tempfile.mkdtemp()) / \"demo.mp4\", seconds=6))\n"
             "tiny = MODEL.startswith(\"tiny\")\n"
             "# The toy prompt is short: use small blocks and no dense cut-off so that Prism really runs.\n"
             "prism = PrismConfig.video(block_size=64, min_sparse_len=0) if tiny else PrismConfig.video()\n"
             "qa = VideoQA(MODEL, attn=\"compare\", prism=prism, video=VideoOptions(fps=2.0, max_frames=8),\n"
             "             max_new_tokens=16, device=DEVICE)\n"
             "result = qa(video, \"Which way does the red square move?\")\n"
             "print(format_report(result))"),
    ("code", "import matplotlib.pyplot as plt\n\n"
             "modes = list(result[\"runs\"])\n"
             "prefill = [result[\"runs\"][m][\"prefill_s\"] * 1e3 for m in modes]\n"
             "plt.figure(figsize=(4, 3))\nplt.bar(modes, prefill, color=[\"gray\", \"tab:purple\"])\n"
             "plt.ylabel(\"prefill (ms)\")\n"
             "plt.title(f\"{result['visual_tokens']} visual tokens, speed-up {result['prefill_speedup']:.2f}x\")\n"
             "plt.tight_layout()\nplt.show()"),
]

SELECTION = [
    ("md", "# What Prism selects\n\nPer-layer / per-head density, block-mask heat maps of a video prompt "
           "(text and visual regions marked), and what each RoPE band picks on its own. "
           "Defaults run on a CPU with the toy model; set `MODEL`/`DEVICE` for a real one."),
    ("code", "MODEL = \"tiny-qwen2.5-vl\"\nDEVICE = None\nLAYER, HEAD = 0, 0"),
    ("code", "import tempfile\nfrom pathlib import Path\n\nimport matplotlib.pyplot as plt\nimport torch\n\n"
             "from prism_mm import PrismConfig, SpectralBands, enable_prism, estimate, load_model, rope_layout_from_config\n"
             "from prism_mm.testing.clips import make_demo_video\n"
             "from prism_mm.pipelines.video import VideoOptions, build_inputs\n"
             "from prism_mm.pipelines.session import resolve_model\n"
             "from prism_mm.testing.capture import capture_qkv\n\n"
             "device = DEVICE or (\"cuda\" if torch.cuda.is_available() else \"cpu\")\n"
             "tiny = MODEL.startswith(\"tiny\")\n"
             "cfg = PrismConfig.video(block_size=32, min_sparse_len=0) if tiny else PrismConfig.video()\n"
             "model, processor = load_model(resolve_model(MODEL), attn=\"prism\", prism=cfg, device_map=device,\n"
             "                              dtype=\"float32\" if device == \"cpu\" else \"bfloat16\")\n"
             "model.prism_stats.keep_selections = True\n"
             "clip = make_demo_video(Path(tempfile.mkdtemp()) / \"demo.mp4\", seconds=6)\n"
             "prepared = build_inputs(processor, model.config, str(clip), \"What moves?\", VideoOptions(fps=2.0, max_frames=8))\n"
             "inputs = {k: v.to(device) for k, v in prepared.inputs.items()}\n"
             "with torch.no_grad():\n    model(**inputs)\n"
             "stats = model.prism_stats\nprint(stats.summary())"),
    ("code", "dens = stats.per_head_density()\n"
             "fig, ax = plt.subplots(figsize=(6, 3))\nim = ax.imshow(dens.T, aspect=\"auto\", cmap=\"viridis\", vmin=0, vmax=1)\n"
             "ax.set(xlabel=\"layer\", ylabel=\"query head\", title=\"fraction of causal blocks computed\")\n"
             "fig.colorbar(im)\nplt.show()"),
    ("code", "sel = stats.layers[LAYER].selection\nmask = sel.to_mask()[0, HEAD].float().cpu()\n"
             "ids = prepared.inputs[\"input_ids\"][0]\nvisual = (ids == model.config.video_token_id).nonzero().flatten()\n"
             "v0, v1 = visual.min().item() / sel.block_size, (visual.max().item() + 1) / sel.block_size\n"
             "fig, ax = plt.subplots(figsize=(5, 5))\nax.imshow(mask, cmap=\"Greys\", interpolation=\"nearest\")\n"
             "for x in (v0, v1):\n    ax.axvline(x - 0.5, color=\"tab:orange\")\n    ax.axhline(x - 0.5, color=\"tab:orange\")\n"
             "ax.set(xlabel=\"key block\", ylabel=\"query block\",\n"
             "       title=f\"layer {LAYER}, head {HEAD}: selected blocks (orange: video tokens)\")\nplt.show()"),
    ("md", "## High- vs low-frequency band picks\nThe same layer scored with one band only (the other band's "
           "threshold at its minimum keeps just its top block)."),
    ("code", "qkv = capture_qkv(model, **inputs)\nq, k, _ = qkv[LAYER]\n"
             "layout = rope_layout_from_config(model.config)\nd = q.shape[-1]\n"
             "bands = layout.bands(*cfg.band_dims(d))\nonly = {}\n"
             "for name, band in ((\"high band\", bands.high), (\"low band\", bands.low)):\n"
             "    one = SpectralBands(high=band, low=band)\n"
             "    only[name] = estimate(q, k, cfg, one, backend=\"torch\").to_mask()[0, HEAD].cpu()\n"
             "fig, axes = plt.subplots(1, 3, figsize=(12, 4))\n"
             "for ax, (name, m) in zip(axes, [(\"union (Prism)\", estimate(q, k, cfg, bands, backend=\"torch\").to_mask()[0, HEAD].cpu()), *only.items()]):\n"
             "    ax.imshow(m.float(), cmap=\"Greys\", interpolation=\"nearest\")\n"
             "    ax.set(title=f\"{name}: density {m.float().sum() / torch.ones_like(m).tril().sum():.2f}\", xlabel=\"key block\")\n"
             "axes[0].set_ylabel(\"query block\")\nplt.tight_layout()\nplt.show()"),
]

KERNELS = [
    ("md", "# Kernel benchmark plots\n\nFrom the committed results of `python -m benchmarks.kernels` "
           "(`benchmarks/results/kernels-*.json`): speed-up over dense cuDNN attention vs sequence length and "
           "vs density, Prism against FlexAttention on the same block masks."),
    ("code", "import json\nfrom pathlib import Path\n\nimport matplotlib.pyplot as plt\n\n"
             "SHAPE = \"qwen2.5-vl-7b\"  # or \"qwen3-vl-8b\": kernels-<device>.json holds both attention shapes\n"
             "results = sorted(Path(\"benchmarks/results\").glob(\"kernels-*.json\"))\n"
             "assert results, \"no kernel results: run python -m benchmarks.kernels on a GPU\"\n"
             "data = json.loads(results[0].read_text())\nmeta = data[\"meta\"]\n"
             "rows = [r for r in data[\"rows\"] if r[\"model\"] == SHAPE]\n"
             "print(results[0].name, meta[\"device\"], SHAPE, len(rows), \"rows\")"),
    ("code", "def speedups(method, density):\n"
             "    pts = [(r[\"n\"], r[\"speedup_vs_cudnn\"]) for r in rows\n"
             "           if r[\"method\"] == method and abs(r[\"density\"] - density) < 0.03]\n"
             "    return sorted(pts)\n\n"
             "fig, ax = plt.subplots(figsize=(6, 4))\n"
             "for density, color in ((0.05, \"tab:green\"), (0.1, \"tab:blue\"), (0.25, \"tab:orange\"), (0.5, \"tab:red\"), (1.0, \"k\")):\n"
             "    for method, style in ((\"prism_sparse\", \"o-\"), (\"flex\", \"x--\")):\n"
             "        pts = speedups(method, density)\n"
             "        if pts:\n"
             "            ax.plot([n / 1024 for n, _ in pts], [s for _, s in pts], style, color=color,\n"
             "                    label=f\"{'Prism' if method == 'prism_sparse' else 'Flex'} d={density}\")\n"
             "ax.axhline(1, color=\"gray\", lw=0.8)\nax.set(xscale=\"log\", xlabel=\"tokens (K)\", ylabel=\"speed-up vs SDPA cuDNN dense\",\n"
             "       title=meta[\"device\"])\nax.legend(fontsize=7, ncol=2)\nplt.show()"),
    ("code", "n_max = max(r[\"n\"] for r in rows if r[\"method\"] == \"prism_sparse\")\n"
             "fig, ax = plt.subplots(figsize=(5, 4))\n"
             "for method, style in ((\"prism_sparse\", \"o-\"), (\"flex\", \"x--\")):\n"
             "    pts = sorted((r[\"density\"], r[\"speedup_vs_cudnn\"]) for r in rows if r[\"method\"] == method and r[\"n\"] == n_max)\n"
             "    ax.plot(*zip(*pts), style, label=method)\n"
             "ax.plot([0.05, 1], [1 / 0.05, 1], \":\", color=\"gray\", label=\"1/density\")\n"
             "ax.set(xscale=\"log\", yscale=\"log\", xlabel=\"density\", ylabel=\"speed-up vs cuDNN dense\", title=f\"{n_max // 1024}K tokens\")\n"
             "ax.legend()\nplt.show()"),
]


def write(name, cells):
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    write("01_quickstart.ipynb", QUICKSTART)
    write("02_what_prism_selects.ipynb", SELECTION)
    write("03_kernel_benchmark_plots.ipynb", KERNELS)
