"""Writes the example notebooks. Edit the cells here, not the .ipynb.

    python examples/make_notebooks.py --execute        # regenerate all, execute them in place (commit these)
    python examples/make_notebooks.py --execute 01     # only the notebooks whose name contains "01"
    python examples/make_notebooks.py                  # sources only, unexecuted (tests/test_notebooks.py
                                                       # then fails until they are executed)

Execution runs each notebook with nbclient, kernel python3, in examples/ (the folder Jupyter starts
in), on the CPU unless a GPU is visible; with the tiny model defaults each takes well under a minute
on two cores. The notebooks are committed executed so that their plots show on GitHub.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    ("md", "# prism_mm quickstart: a question about a video, Prism vs dense\n\n"
           "Runs anywhere with the toy random-weight model (`tiny-qwen2.5-vl`, meaningless answers). "
           "For real answers set `MODEL` to `Qwen/Qwen2.5-VL-7B-Instruct` (or a local copy) and `DEVICE` to `cuda`."),
    ("code", "MODEL = \"tiny-qwen2.5-vl\"   # or \"Qwen/Qwen2.5-VL-7B-Instruct\", \"Qwen/Qwen3-VL-8B-Instruct\", a local path\n"
             "DEVICE = None                 # None: cuda if available, else cpu\n"
             "VIDEO = None                  # None: a generated demo clip; or a path to your .mp4"),
    ("code", "import tempfile\nimport warnings\nfrom pathlib import Path\n\n"
             "warnings.filterwarnings(\"ignore\", message=\"IProgress not found\")  # tqdm without ipywidgets: text bars\n"
             "from transformers.utils import logging as hf_logging\n\n"
             "from prism_mm import PrismConfig\n"
             "from prism_mm.demo_clips import make_demo_video\n"
             "from prism_mm.pipelines.video import VideoOptions\n"
             "from prism_mm.pipelines.qa import VideoQA\n"
             "from prism_mm.pipelines.report import format_report\n\n"
             "video = VIDEO or str(make_demo_video(Path(tempfile.mkdtemp()) / \"demo.mp4\", seconds=6))\n"
             "tiny = MODEL.startswith(\"tiny\")\n"
             "if tiny:  # the toy model loads in no time: no weight-loading bars in the outputs\n"
             "    hf_logging.disable_progress_bar()\n"
             "    # The toy prompt is short (about a thousand tokens): small blocks, no dense cut-off for short prompts\n"
             "    # (min_sparse_len=0) and no dense fallback for nearly dense selections (max_density=1.0),\n"
             "    # so that Prism really selects blocks. Real models on long videos use the defaults.\n"
             "    prism = PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0,\n"
             "                              threshold_high=0.9, threshold_low=0.9)\n"
             "else:\n"
             "    prism = PrismConfig.video()\n"
             "qa = VideoQA(MODEL, attn=\"compare\", prism=prism, video=VideoOptions(fps=4.0, max_frames=16),\n"
             "             max_new_tokens=16, device=DEVICE, progress=not tiny)\n"
             "result = qa(video, \"Which way does the red square move?\")\n"
             "print(format_report(result))"),
    ("md", "## What Prism selected\n\n"
           "**CPU timings are not a speed measure.** On a CPU Prism runs as the plain-PyTorch twins of its GPU "
           "kernels, and the toy prompt is about a thousand tokens long, so the prefill times above say nothing "
           "about Prism's speed. Speed is measured on a GPU at long contexts: see `benchmarks/results/*.md` "
           "(`prefill-<device>.md` for the model prefill, `kernels-<device>.md` for the attention kernels; "
           "notebook 03 plots the latter).\n\n"
           "What this run does show is what Prism computed: the Prism run's record (`result[\"runs\"][\"prism\"]`) "
           "holds, for the prefill of the video's prefix (the prompt up to the end of the video, built once and "
           "reused by every question about it), the fraction of the causal key blocks each decoder layer attended to. "
           "Random weights attend almost uniformly, so the toy model keeps nearly every block; real weights "
           "concentrate their attention and keep far fewer (`benchmarks/results/fidelity.md` measures density and "
           "accuracy on real weights)."),
    ("code", "import matplotlib.pyplot as plt\n\n"
             "run = result[\"runs\"][\"prism\"]  # the Prism run; its video prefix was built for this question\n"
             "print(f\"Prism ran sparse in {run['sparse_layers']}/{run['layers']} decoder layers, \"\n"
             "      f\"mean density {run['mean_density']:.3f} (block size {prism.block_size})\")\n"
             "rows = run[\"layer_report\"]  # per decoder layer: key blocks kept of the causal total\n"
             "layers = [row[\"layer\"] for row in rows]\n"
             "fig, ax = plt.subplots(figsize=(5, 3))\n"
             "ax.bar(layers, [row[\"density\"] for row in rows], color=\"tab:purple\", alpha=0.6)\n"
             "for row in rows:\n"
             "    ax.annotate(f\"{row['kept_blocks']}/{row['total_blocks']}\", (row[\"layer\"], row[\"density\"]),\n"
             "                ha=\"center\", va=\"bottom\", fontsize=7)\n"
             "ax.axhline(1.0, color=\"gray\", lw=0.8, ls=\"--\")\n"
             "ax.set(xlabel=\"decoder layer\", ylabel=\"fraction of causal blocks\", ylim=(0, 1.15), xticks=layers,\n"
             "       title=f\"what Prism computed (video prefix, {run['prefix_tokens']} tokens)\")\n"
             "plt.tight_layout()\nplt.show()"),
]

SELECTION = [
    ("md", "# What Prism selects\n\nPer-layer / per-head density, block-mask heat maps of a video prompt "
           "(text and visual regions marked), and what each RoPE band picks on its own. "
           "Defaults run on a CPU with the toy model; set `MODEL`/`DEVICE` for a real one."),
    ("code", "MODEL = \"tiny-qwen2.5-vl\"\nDEVICE = None\nLAYER, HEAD = 0, 0"),
    ("code", "import tempfile\nimport warnings\nfrom pathlib import Path\n\n"
             "warnings.filterwarnings(\"ignore\", message=\"IProgress not found\")  # tqdm without ipywidgets: text bars\n"
             "import matplotlib.pyplot as plt\nimport torch\n"
             "from transformers.utils import logging as hf_logging\n\n"
             "from prism_mm import PrismConfig, SpectralBands, estimate, load_model, rope_spec_from_config\n"
             "from prism_mm.demo_clips import make_demo_video\n"
             "from prism_mm.pipelines.video import VideoOptions, build_inputs\n"
             "from prism_mm.testing.capture import capture_qkv\n\n"
             "device = DEVICE or (\"cuda\" if torch.cuda.is_available() else \"cpu\")\n"
             "tiny = MODEL.startswith(\"tiny\")\n"
             "if tiny:  # the toy model loads in no time: no weight-loading bars in the outputs\n"
             "    hf_logging.disable_progress_bar()\n"
             "# The toy prompt is short: small blocks, no dense cut-offs, so that every layer really selects blocks.\n"
             "cfg = (PrismConfig.video(block_size=16, min_sparse_len=0, max_density=1.0, threshold_high=0.9, threshold_low=0.9)\n"
             "       if tiny else PrismConfig.video())\n"
             "model, processor = load_model(MODEL, attn=\"prism\", prism=cfg, device_map=device,\n"
             "                              dtype=\"float32\" if device == \"cpu\" else \"bfloat16\")\n"
             "model.prism_stats.keep_selections = True\n"
             "clip = make_demo_video(Path(tempfile.mkdtemp()) / \"demo.mp4\", seconds=6)\n"
             "prepared = build_inputs(processor, model.config, str(clip), \"What moves?\", VideoOptions(fps=2.0, max_frames=8))\n"
             "inputs = {k: v.to(device) for k, v in prepared.inputs.items()}\n"
             "with torch.no_grad():\n    model(**inputs)\n"
             "stats = model.prism_stats\n"
             "print(f\"{prepared.total_tokens} tokens ({prepared.visual_tokens} visual): sparse in \"\n"
             "      f\"{stats.sparse_layers}/{len(stats.layers)} layers, mean density {stats.mean_density:.3f}\")"),
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
    ("md", "## High- vs low-frequency band picks\nThe same layer and head scored with one band only (both bands of "
           "the estimate set to that band's dims), next to Prism's union of the two."),
    ("code", "qkv = capture_qkv(model, **inputs)\nq, k, _ = qkv[LAYER]\n"
             "rope = rope_spec_from_config(model.config)\nd = q.shape[-1]\n"
             "bands = rope.bands(*cfg.band_dims(d))\nonly = {}\n"
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
             "# The results live in <repo>/benchmarks/results: walk up from the working directory (examples/ when\n"
             "# Jupyter opened this notebook, or the repository root) to the first folder that has them.\n"
             "ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / \"benchmarks\" / \"results\").is_dir()), None)\n"
             "assert ROOT is not None, f\"no benchmarks/results in {Path.cwd()} or above: open this notebook inside the prism_mm repository\"\n"
             "SHAPE = \"qwen2.5-vl-7b\"  # or \"qwen3-vl-8b\": kernels-<device>.json holds both attention shapes\n"
             "results = sorted((ROOT / \"benchmarks\" / \"results\").glob(\"kernels-*.json\"))\n"
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

# Every notebook this script writes: file name -> cells. tests/test_notebooks.py checks that exactly these
# .ipynb files are committed, with these sources, executed.
NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_what_prism_selects.ipynb": SELECTION,
    "03_kernel_benchmark_plots.ipynb": KERNELS,
}
KERNEL = "python3"
TIMEOUT_S = 900  # per cell


def build(name: str) -> nbf.NotebookNode:
    """The unexecuted notebook `name` (a NOTEBOOKS key). Cell ids are fixed, so regenerating changes no ids."""
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
                for kind, src in NOTEBOOKS[name]]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbf.NotebookNode, cwd: Path = HERE) -> nbf.NotebookNode:
    """Run `nb` top to bottom in `cwd` (default examples/, where Jupyter starts), outputs in place."""
    import nbclient

    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=KERNEL, record_timing=False,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    nb.metadata.pop("widgets", None)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execute", action="store_true",
                        help="execute each notebook in examples/ and write it with its outputs (what is committed)")
    parser.add_argument("names", nargs="*", help="only the notebooks whose file name contains one of these")
    args = parser.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.names or any(s in n for s in args.names)]
    if not names:
        parser.error(f"no notebook matches {args.names}; notebooks: {', '.join(NOTEBOOKS)}")
    for name in names:
        nb = build(name)
        t0 = time.perf_counter()
        if args.execute:
            execute(nb)
        nbf.write(nb, HERE / name)
        done = f"executed in {time.perf_counter() - t0:.1f} s" if args.execute else "sources only (not executed)"
        print(f"wrote examples/{name}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
