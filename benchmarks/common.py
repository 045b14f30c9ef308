"""What the benchmarks share: GPU timing, the fixed-density block masks, the dense baselines, and one
results file set per benchmark and device (`<name>-<device>.{json,md,png}`, or `<name>.*` for CPU runs).

A results JSON is {"meta": {..., "runs": [one entry per run that measured some of the rows]}, "rows": [...]}.
A run with --merge replaces the rows it measured (same key) in the existing file and keeps the others.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from prism_mm.kernels import ops as kernel_ops
from prism_mm.kernels.blocks import BlockSelection, causal_block_mask, indices_from_block_mask

RESULTS = Path("benchmarks/results")


# --- timing and inputs (CUDA) ---------------------------------------------------------------------------------

def bench(fn, min_runs=10, max_ms=3000.0):
    """Median of do_bench after warm-up, over at least `min_runs` timed runs (at least 3 for calls that
    take longer than max_ms / min_runs; do_bench's default 100 ms budget would time a 128K call once)."""
    import triton

    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = 1000 * (time.perf_counter() - start)
    rep = max(100.0, min(min_runs * est, max(max_ms, 3 * est)))
    return triton.testing.do_bench(fn, warmup=max(25.0, 2 * est), rep=rep, return_mode="median")


def realistic_mask(hq, n, density, gen, block_size=128, device="cuda", stripes=4):
    """[1, hq, n/bs, n/bs] bool: sink + diagonal + a few vertical stripes per head + random blocks, to
    `density` of the causal blocks (n a multiple of block_size)."""
    nb = n // block_size
    valid = causal_block_mask(n, n, block_size, device)[None]
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


def fixed_density_selection(heads: int, n: int, density: float, gen, block_size: int = 128, device="cuda"):
    """A realistic_mask selection of `density` for n causal tokens (any n), as a BlockSelection."""
    nb = (n + block_size - 1) // block_size
    mask = realistic_mask(heads, nb * block_size, density, gen, block_size, device)
    mask = mask[..., :nb, :nb] & causal_block_mask(n, n, block_size, device)
    return BlockSelection.from_mask(mask, block_size, n, n)


def register_benchmark_attentions(selections: dict) -> None:
    """transformers attention entries for the decoder benchmarks: 'prism_fixed' (the Prism sparse kernel on the
    fixed-density selection selections[(layer index, query heads, tokens)] if present, else
    selections[(query heads, tokens)], i.e. what that density costs inside the model) and 'no_attention' (a copy of
    V: the cost of everything but attention)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def fixed(module, query, key, value, attention_mask, scaling=None, **kw):
        b, h, n, d = query.shape
        out = torch.empty(b, n, h, d, device=query.device, dtype=query.dtype)
        per_layer = (getattr(module, "layer_idx", None), h, n)
        selection = selections[per_layer] if per_layer in selections else selections[(h, n)]
        kernel_ops("auto", query.device).block_sparse_attention(query, key, value, selection, scaling,
                                                                out.transpose(1, 2))
        return out, None

    def none(module, query, key, value, attention_mask, **kw):
        group = query.shape[1] // value.shape[1]
        return value.repeat_interleave(group, 1).transpose(1, 2), None

    for name, fn in (("prism_fixed", fixed), ("no_attention", none)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)


def sdpa_runner(q, k, v, backend):
    """Dense causal SDPA pinned to one backend ("cudnn" or "flash"), K/V expanded to the query heads."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    group = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # expanded outside the timing

    def run():
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

    return run


def flex_runner(q, k, v, mask, block_size=128):
    """Compiled FlexAttention on the same block mask: diagonal blocks partial (causal mask_mod), others full."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    nb = mask.shape[-1]
    eye = torch.eye(nb, dtype=torch.bool, device=mask.device)
    partial = mask & eye
    full = mask & ~eye
    pc, pi = indices_from_block_mask(partial)
    fc, fi = indices_from_block_mask(full)

    def causal(b, h, qi, ki):
        return qi >= ki

    bm = BlockMask.from_kv_blocks(pc, pi.clamp_min(0), fc, fi.clamp_min(0), BLOCK_SIZE=block_size, mask_mod=causal)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(q, k, v, block_mask=bm, enable_gqa=True)


# --- results files ----------------------------------------------------------------------------------------------

def device_slug(device: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (the results file suffix)."""
    return device.replace("NVIDIA ", "").replace(" ", "-").lower()


def run_info(**extra) -> dict:
    """What one run records about itself: time and versions, plus what it covered."""
    import triton

    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), **extra}


def merge(old: dict, new: dict, key: Callable[[dict], tuple]) -> dict:
    """`new` plus the rows of `old` whose key `new` did not measure (old rows first). Each run lists the row keys
    it still covers ("covers"); an old run left covering nothing is dropped."""
    measured = {key(r) for r in new["rows"]}
    rows = [r for r in old["rows"] if key(r) not in measured] + new["rows"]
    runs = []
    for run in old["meta"]["runs"]:
        covers = [c for c in run["covers"] if tuple(c) not in measured]
        if covers:
            runs.append({**run, "covers": covers})
    return {"meta": {**new["meta"], "runs": runs + new["meta"]["runs"]}, "rows": rows}


def describe_runs(meta: dict) -> list[str]:
    """One markdown line per run: what it recorded about itself and which rows (keys) are its."""
    lines = []
    for run in meta["runs"]:
        info = ", ".join(f"{k} {v}" for k, v in run.items() if k != "covers")
        groups: dict[str, list[str]] = {}  # row keys grouped by all but their last part: "model: n1, n2, ..."
        for c in run["covers"]:
            groups.setdefault(" ".join(map(str, c[:-1])), []).append(str(c[-1]))
        lines.append(f"- {info}: " + "; ".join(f"{g} {', '.join(v)}" for g, v in groups.items()))
    return lines


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_panels(rows: list[dict], width: float, height: float):
    """A figure with one panel per model of `rows` (in order of appearance): (fig, [(axis, model), ...])."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = pyplot().subplots(1, len(models), figsize=(width * len(models), height), squeeze=False)
    return fig, list(zip(axes[0], models))


def save_figure(fig, path: Path, dpi: int) -> None:
    """Lay out, write and close a matplotlib figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


class Results:
    """One benchmark's file set. `key(row)` identifies what a row measured (a --merge replaces rows by key);
    `table(data) -> markdown lines` and `plot(data, png_path)` render a results dict."""

    def __init__(self, name: str, key: Callable[[dict], tuple], table: Callable[[dict], list[str]],
                 plot: Callable[[dict, Path], None]):
        self.name, self.key, self.table, self.plot = name, key, table, plot

    def add_arguments(self, ap, merge: bool = True) -> None:
        """The CLI options every benchmark shares: --out, --merge (GPU benchmarks), --redraw."""
        ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
        if merge:
            ap.add_argument("--merge", action="store_true", help="replace only the measured rows of the existing results file")
        ap.add_argument("--redraw", type=Path, metavar="JSON", help="rewrite the table and plot of a results JSON and exit")

    def parse(self, ap, merge: bool = True):
        """Adds the shared options and parses the command line: the args, or None after --redraw (done then)."""
        self.add_arguments(ap, merge)
        args = ap.parse_args()
        if args.redraw:
            self.redraw(args.redraw)
            return None
        return args

    def parse_gpu_run(self, ap):
        """parse(), then (args, CUDA device name, the results --merge merges into or None); None after --redraw."""
        args = self.parse(ap)
        if args is None:
            return None
        if not torch.cuda.is_available():
            raise SystemExit(f"benchmarks.{self.name} needs a CUDA GPU")
        device = torch.cuda.get_device_name()
        return args, device, self.load(args.out, device) if args.merge else None

    def stem(self, out_dir: Path, device: str | None) -> Path:
        return Path(out_dir) / (f"{self.name}-{device_slug(device)}" if device else self.name)

    def load(self, out_dir: Path, device: str | None = None) -> dict | None:
        """The results already written for this device (what --merge merges into), or None."""
        path = Path(f"{self.stem(out_dir, device)}.json")
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, meta: dict, run: dict, rows: list[dict], out_dir: Path, device: str | None = None,
             base: dict | None = None, quiet: bool = False) -> None:
        """Write one run's rows (merged into `base` if given) as <name>[-<device>].{json,md,png}."""
        run = {**run, "covers": sorted({self.key(r) for r in rows})}
        data = {"meta": {**meta, "runs": [run]}, "rows": rows}
        self.write(merge(base, data, self.key) if base else data, self.stem(out_dir, device), quiet)

    def write(self, data: dict, stem: Path, quiet: bool = False) -> None:
        """<stem>.json, <stem>.md and <stem>.png; prints the table unless quiet."""
        stem.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{stem}.json").write_text(json.dumps(data, indent=1))
        lines = self.table(data)
        Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
        self.plot(data, Path(f"{stem}.png"))
        if not quiet:
            print("\n".join(lines))

    def redraw(self, json_path: Path) -> None:
        """Rewrite the table and the plot of a results JSON (the numbers are read, not measured)."""
        json_path = Path(json_path)
        self.write(json.loads(json_path.read_text()), json_path.with_suffix(""), quiet=True)
