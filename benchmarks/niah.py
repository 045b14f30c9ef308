"""Needle in a haystack on real weights, offline, CPU-runnable (multi-key retrieval in the style of RULER).

Each haystack is the licence texts of /usr/share/common-licenses (from a random paragraph on, wrapping around) with
`--needles` sentences "The magic number for <key> is <7 digits>." inserted at line breaks near random depths spread
over 10%-90% of it; each needle is asked for once ("What is the magic number for <key>?"), greedy answer, exact
match of the number. One sample = one (haystack, needle) pair: `--haystacks` x `--needles` samples per length.

The prompt is ChatML (the models' template): the document in the user turn, the question after it. Per haystack
and method the document is prefilled once (Prism selects its blocks over the whole document), then for every
needle the question runs as the last prefill chunk against that cache (q_len < kv_len, as in chunked prefill),
the answer is decoded densely, and the cache is cropped back to the document. Methods: dense (SDPA), prism at its
default and video thresholds, and method="cutoff" at its default and one sparser knob; each with the mean density
of its document prefill (fraction of causal blocks kept, all layers and heads).

    python -m benchmarks.niah --tokens 8192                 # -> benchmarks/results/niah-qwen2.5-coder-0.5b.{json,md,png}
    python -m benchmarks.niah --tokens 16384 --merge        # adds the 16K rows
    python -m benchmarks.niah --tokens 2048 --haystacks 1 --needles 2 --out /tmp/n   # a quick run
"""
from __future__ import annotations

import argparse
import random
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import Results, pyplot, run_info, save_figure
from benchmarks.fidelity import LICENCE_TEXTS, LICENCES
from prism_mm import PrismConfig, enable_prism
from prism_mm.testing.weights import QWEN_CODER_0_5B, QWEN_CODER_1_5B, MissingWeights, load_smollm2

KEYS = ("amber", "basalt", "cedar", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kestrel",
        "lantern", "meadow", "nectar", "orchid", "pebble", "quartz", "raven", "saffron", "tundra", "umber", "violet",
        "willow", "yarrow", "zephyr", "alder", "bramble", "cobalt", "delta", "falcon")
MODELS = {"qwen2.5-coder-0.5b": ("Qwen2.5-Coder-0.5B-Instruct", QWEN_CODER_0_5B.load),
          "qwen2.5-coder-1.5b": ("Qwen2.5-Coder-1.5B-Instruct", QWEN_CODER_1_5B.load),
          "smollm2-135m": ("SmolLM2-135M-Instruct", load_smollm2)}
SYSTEM = "You are a helpful assistant."
INTRO = "Read the document below. Some magic numbers are hidden in it; remember them.\n\n"


def methods(block_size: int, dense_tails=(0,)) -> dict[str, PrismConfig | None]:
    """The rows: None = dense SDPA; each sparse row once per PrismConfig.dense_tail in `dense_tails` (named
    "..., dense tail N" when N > 0)."""
    base = PrismConfig.paper(block_size=block_size, min_sparse_len=0)  # the paper's 0.95, dense_tail 0
    cutoff = replace(base, method="cutoff")
    sparse = {"prism default (0.95)": base, "prism video preset (0.93)": base.with_threshold(0.93),
              "prism@0.9": base.with_threshold(0.9), "prism@0.99": base.with_threshold(0.99),
              "cutoff@0.001": replace(cutoff, cutoff=0.001), "cutoff@0.002": replace(cutoff, cutoff=0.002),
              "cutoff@0.005": replace(cutoff, cutoff=0.005),
              f"cutoff default ({cutoff.cutoff})": cutoff, f"cutoff@{2 * cutoff.cutoff:g}": replace(cutoff, cutoff=2 * cutoff.cutoff),
              f"cutoff@{5 * cutoff.cutoff:g}": replace(cutoff, cutoff=5 * cutoff.cutoff),
              "meanpool (0.95)": replace(base, method="meanpool")}
    rows: dict[str, PrismConfig | None] = {"dense": None}
    for tail in dense_tails:
        rows.update({name + (f", dense tail {tail}" if tail else ""): replace(cfg, dense_tail=tail)
                     for name, cfg in sparse.items()})
    return rows


def make_haystack(tok, n_tokens: int, n_needles: int, rng: random.Random) -> dict:
    """{"prefix": token ids of the system turn + document, "needles": [(key, value, depth)], "questions": [ids]}:
    a document of about n_tokens tokens in all (prefix + the longest question)."""
    paragraphs = [p for t in LICENCE_TEXTS for p in Path(LICENCES, t).read_text().split("\n\n") if p.strip()]
    start = rng.randrange(len(paragraphs))
    keys = rng.sample(KEYS, n_needles)
    needles = [(key, str(rng.randrange(1_000_000, 10_000_000))) for key in keys]
    depths = sorted(0.1 + 0.8 * (i + rng.random()) / n_needles for i in range(n_needles))
    head = tok(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{INTRO}").input_ids
    questions = [tok(f"\n\nWhat is the magic number for {key}? Answer with the number only.<|im_end|>\n"
                     "<|im_start|>assistant\n").input_ids for key, _ in needles]
    needle_ids = [tok(f"The magic number for {key} is {value}.\n").input_ids for key, value in needles]
    budget = n_tokens - len(head) - max(map(len, questions)) - sum(map(len, needle_ids))
    body: list[int] = []
    i = start
    while len(body) < budget:
        body += tok(paragraphs[i % len(paragraphs)] + "\n\n").input_ids
        i += 1
    body = body[:budget]
    newline = [j for j, t in enumerate(body) if tok.decode([t]).endswith("\n")]
    cuts = [min(newline, key=lambda j: abs(j - d * budget)) + 1 if newline else round(d * budget) for d in depths]
    doc, last = [], 0
    for cut, ids in zip(cuts, needle_ids):
        doc += body[last:cut] + ids
        last = cut
    doc += body[last:]
    return {"prefix": head + doc, "needles": [(k, v, round(d, 3)) for (k, v), d in zip(needles, depths)],
            "questions": questions}


def answer(model, cache, question: list[int], eos: set[int], max_new_tokens: int = 24) -> list[int]:
    """Greedy answer tokens to `question` run as one chunk after the cached document (up to an end-of-turn token or
    max_new_tokens: room for "The magic number for <key> is <7 digits>."); the cache is cropped back after."""
    n = cache.get_seq_length()
    device = next(model.parameters()).device
    ids = torch.tensor([question], device=device)
    out = []
    with torch.no_grad():
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        for _ in range(max_new_tokens):
            token = int(logits.argmax(-1))
            if token in eos:
                break
            out.append(token)
            logits = model(input_ids=torch.tensor([[token]], device=device), past_key_values=cache, use_cache=True).logits[:, -1]
    cache.crop(n - cache.get_seq_length())  # a negative count: drop the question and the answer
    return out


def run(model_name: str, tokens: list[int], haystacks: int, needles: int, block_size: int, seed: int,
        only: list[str] | None = None, device: str = "cpu", dense_tails=(0,)) -> dict:
    """CPU: fp32 and the torch twin of the kernels; CUDA: bf16 and the Triton kernels (what users run)."""
    from transformers import DynamicCache

    title, load = MODELS[model_name]
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model, tok = load(dtype)
    model.to(device)
    backend = "torch" if device == "cpu" else "auto"
    eos = {t for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if t is not None}
    rows = []
    for n in tokens:
        rng = random.Random(f"{seed}-{n}")
        samples = [make_haystack(tok, n, needles, rng) for _ in range(haystacks)]
        for name, cfg in methods(block_size, dense_tails).items():
            if only and not any(name.startswith(o) for o in only):
                continue
            correct, densities, seconds, answers = 0, [], 0.0, []
            for sample in tqdm(samples, desc=f"{n} tokens, {name}"):
                if cfg is None:
                    model.set_attn_implementation("sdpa")
                else:
                    enable_prism(model, cfg, backend=backend)
                cache = DynamicCache()
                start = time.perf_counter()
                with torch.no_grad():
                    model(input_ids=torch.tensor([sample["prefix"]], device=device), past_key_values=cache,
                          use_cache=True, logits_to_keep=1)
                if device != "cpu":
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - start
                if cfg is not None:
                    densities.append(model.prism_stats.mean_density)
                for (key, value, depth), question in zip(sample["needles"], sample["questions"]):
                    text = tok.decode(answer(model, cache, question, eos))
                    hit = re.findall(r"\d+", text)[:1] == [value]  # the first number in the answer
                    correct += hit
                    answers.append({"key": key, "value": value, "depth": depth, "answer": text, "correct": hit})
            model.set_attn_implementation("sdpa")
            rows.append({"model": model_name, "tokens": n, "method": name, "samples": len(answers),
                         "correct": correct, "accuracy": correct / len(answers),
                         "mean_density": sum(densities) / len(densities) if densities else 1.0,
                         "prefill_seconds_per_haystack": round(seconds / len(samples), 3), "answers": answers})
            print(f"{n} tokens, {name}: {correct}/{len(answers)}"
                  + (f", density {rows[-1]['mean_density']:.3f}" if densities else ""), flush=True)
    where = "2-core CPU" if device == "cpu" else torch.cuda.get_device_name()
    meta = {"model": title, "texts": list(LICENCE_TEXTS), "block_size": block_size, "haystacks": haystacks,
            "needles": needles, "seed": seed, "device": where, "dtype": str(dtype).removeprefix("torch."),
            "kernels": "torch twin" if device == "cpu" else "Triton"}
    return {"meta": meta, "rows": rows}


def table(data: dict) -> list[str]:
    meta = data["meta"]
    lines = [f"# Needle in a haystack: {meta['model']}, block {meta['block_size']}", "",
             f"Haystacks x {meta['needles']} needles per row (seed {meta['seed']}; the samples column counts them, "
             "a run with more haystacks extends the same sequence): licence texts with 'The magic number for <key> is <7 digits>.' at depths 10%-90%, one question per needle, "
             "greedy answer, exact match. Density: mean fraction of causal blocks the document prefill kept (all "
             "layers and heads). `python -m benchmarks.niah --help` says how it runs.", ""]
    where = f"{meta.get('device', '2-core CPU')}, {meta.get('dtype', 'float32')}, {meta.get('kernels', 'torch twin')} kernels"
    for run in meta.get("runs", []):
        lines.append(f"Made by: `{run['command']}` ({run['time']}, torch {run['torch']}; {where})")
    lines += ["", "| tokens | method | correct | accuracy | mean density | prefill s / haystack (wall, first incl. compile) |",
              "|---|---|---|---|---|---|"]
    order = lambda r: (r["tokens"], r["method"] != "dense", "dense tail" in r["method"], r["mean_density"])  # noqa: E731
    for r in sorted(data["rows"], key=order):
        lines.append(f"| {r['tokens']} | {r['method']} | {r['correct']}/{r['samples']} | {r['accuracy']:.2f} | "
                     f"{r['mean_density']:.3f} | {r['prefill_seconds_per_haystack']:.3g} |")
    return lines


def plot(data: dict, path: Path) -> None:
    """One panel per length: accuracy against density per method (colour: family; filled: with a dense tail),
    dense as a line with its +-1 standard error band."""
    plt = pyplot()
    lengths = sorted({r["tokens"] for r in data["rows"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.2 * len(lengths), 4.3), squeeze=False)
    colors = {"prism": "C0", "cutoff": "C1", "meanpool": "C2"}
    for ax, n in zip(axes[0], lengths):
        for r in (r for r in data["rows"] if r["tokens"] == n):
            acc = r["accuracy"]
            if r["method"] == "dense":
                se = (acc * (1 - acc) / r["samples"]) ** 0.5
                ax.axhline(acc, color="k", lw=1, label=f"dense ({r['correct']}/{r['samples']})")
                ax.axhspan(acc - se, acc + se, color="k", alpha=0.08)
                continue
            family = r["method"].split(" ")[0].split("@")[0]
            tail = "dense tail" in r["method"]
            ax.scatter(r["mean_density"], acc, s=36, color=colors.get(family, "C3"),
                       facecolors=colors.get(family, "C3") if tail else "none")
            knob = r["method"].split(",")[0].replace(" default", "").replace(" video preset", "")
            ax.annotate(knob, (r["mean_density"], acc), fontsize=6, xytext=(3, 2), textcoords="offset points")
        for family, c in colors.items():
            ax.scatter([], [], color=c, label=family)
        ax.scatter([], [], facecolors="none", color="grey", label="dense_tail 0 (hollow)")
        ax.scatter([], [], color="grey", label="dense_tail > 0 (filled)")
        ax.set(xlabel="mean density (fraction of causal blocks kept)", ylabel="exact-match accuracy",
               title=f"{n // 1024}K tokens", ylim=(-0.05, 1.05), xlim=(0, 0.65))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"Needle in a haystack, {data['meta']['model']}, {data['meta'].get('device', 'CPU')}")
    save_figure(fig, path, 120)


def results_files(model_name: str) -> Results:
    """benchmarks/results/niah-<model>.{json,md,png}; a row is one (model, length, method)."""
    return Results(f"niah-{model_name}", key=lambda r: (r["model"], r["tokens"], r["method"]), table=table, plot=plot)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="qwen2.5-coder-0.5b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192])
    ap.add_argument("--haystacks", type=int, default=5)
    ap.add_argument("--needles", type=int, default=4, help="needles per haystack, each asked once")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense-tails", type=int, nargs="+", default=[0], metavar="TOKENS",
                    help="PrismConfig.dense_tail values: every sparse row once per value (0: the paper's selection)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: fp32, torch twin; cuda: bf16, Triton kernels (results file niah-<model>-<gpu>.*)")
    ap.add_argument("--methods", nargs="+", metavar="NAME",
                    help="only the rows whose name starts with one of these (e.g. dense 'prism default' 'cutoff default')")
    results_files("any").add_arguments(ap)
    args = ap.parse_args()
    if args.redraw:
        results_files("any").redraw(args.redraw)
        return
    if any(t < 0 for t in args.dense_tails):
        raise SystemExit("--dense-tails must be >= 0")
    if not 1 <= args.needles <= len(KEYS) or args.haystacks < 1:
        raise SystemExit(f"--needles must be in 1..{len(KEYS)} and --haystacks >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here; run on the CPU with --device cpu")
    try:
        data = run(args.model, args.tokens, args.haystacks, args.needles, args.block_size, args.seed, args.methods,
                   args.device, args.dense_tails)
    except MissingWeights as e:
        raise SystemExit(str(e)) from None
    run_meta = run_info(command="python -m benchmarks.niah " + " ".join(sys.argv[1:]))
    files = results_files(args.model)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    files.save(data["meta"], run_meta, data["rows"], Path(args.out), gpu,
               base=files.load(args.out, gpu) if args.merge else None)


if __name__ == "__main__":
    main()
