"""Chunked prefill vs one-pass prefill: does Prism's per-chunk block selection change accuracy on real weights?

In a chunked prefill the queries of one chunk attend to the KV cache of all earlier tokens plus themselves, and Prism
selects blocks per chunk (band calibration / temperatures from the chunk's own query blocks; min_sparse_len is
checked against the chunk's key length; dense_tail keeps all causal blocks for the last dense_tail query tokens of
EACH chunk). So the selection differs from a one-pass prefill. Measured on Qwen2.5-Coder-0.5B-Instruct (GGUF,
fp32, CPU, the "torch" backend = the CPU twin of the kernels): perplexity and next-token top-1 agreement with dense
one pass, for dense one pass, dense chunked (sanity), Prism one pass, Prism chunked at several chunk sizes.

Every run goes through the same code path: a DynamicCache and model.model(input_ids=ids[:, s:e], past_key_values=
cache, use_cache=True) per chunk (one pass = one chunk of n tokens); the chunks' last_hidden_state are concatenated
and benchmarks.fidelity.next_token_stats gives ppl and top-1 predictions.

Mean density: model.prism_stats is reset before every chunk; after the chunk each layer's record gives its density
(mean over heads, 1.0 where it ran dense) and its causal block count (query-block x key-block pairs of the chunk's
causal pass). Per layer the chunks are weighted by causal blocks (sum d*cb / sum cb: the share of a dense chunked
prefill's block work that ran, which is what PrismStats.continued_by does), then averaged over layers (as
PrismRunStats.mean_density does). The unweighted per-chunk densities are kept in the JSON too.

    cd /work/main && PYTHONPATH=. .venv/bin/python lab/chunked_fidelity.py --sample 0 --threads 1 &
    cd /work/main && PYTHONPATH=. .venv/bin/python lab/chunked_fidelity.py --sample 1 --threads 1 &
    # -> lab/logs/chunked_fidelity-cpu.jsonl (appended, one line per sample x config x chunking); the logged run killed
    # sample 1 during prism-video:4096 and ran instead (its dense one pass again, the reference; listed once in the table):
    cd /work/main && PYTHONPATH=. .venv/bin/python lab/chunked_fidelity.py --sample 1 --threads 1 --only dense:0 prism-video-msl0:2048
    PYTHONPATH=. .venv/bin/python lab/chunked_fidelity.py --table   # -> lab/logs/chunked_fidelity-cpu.md
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

LOGS = Path(__file__).resolve().parent / "logs"
JSONL = LOGS / "chunked_fidelity-cpu.jsonl"
MD = LOGS / "chunked_fidelity-cpu.md"
SAMPLES = (("GPL-3", "GPL-2"), ("LGPL-2.1", "GFDL-1.3"), ("Apache-2.0", "MPL-2.0", "Artistic", "CC0-1.0", "MPL-1.1"))
# (config name, chunk size or None = one pass); order = priority (cut from the end when short of time)
RUNS = (("dense", None), ("prism-video", None), ("prism-video", 2048), ("dense", 2048), ("prism-video", 1024),
        ("prism-video", 4096), ("prism-video-msl0", None), ("prism-video-msl0", 2048))


def config_of(name):
    from prism_mm import PrismConfig
    return {"prism-video": PrismConfig.video(), "prism-video-msl0": PrismConfig.video(min_sparse_len=0)}.get(name)


def forward(model, ids, chunk):
    """Final hidden states [1, n, hidden] of a (chunked) prefill, per-chunk layer records, seconds."""
    from transformers import DynamicCache
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:
        cache = DynamicCache()
    n = ids.shape[1]
    chunk = chunk or n
    hs, chunks = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            stats = getattr(model, "prism_stats", None)
            if stats is not None:
                stats.reset()
            out = model.model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True)
            hs.append(out.last_hidden_state)
            if stats is not None and stats.layers:
                chunks.append({"start": s, "end": e, "layers": {
                    i: (float(r.density.float().mean()), r.causal_blocks, r.sparse, r.reason)
                    for i, r in sorted(stats.layers.items())}})
            print(f"    chunk {s}:{e} done, {time.perf_counter() - start:.0f}s", flush=True)
    return torch.cat(hs, 1), chunks, time.perf_counter() - start


def densities(chunks):
    if not chunks:
        return None, None, None
    layers = chunks[0]["layers"].keys()
    weighted = []
    for i in layers:
        num = sum(c["layers"][i][0] * c["layers"][i][1] for c in chunks)
        den = sum(c["layers"][i][1] for c in chunks)
        weighted.append(num / den)
    per_chunk = [sum(c["layers"][i][0] for i in layers) / len(layers) for c in chunks]
    sparse_layers = [sum(c["layers"][i][2] for i in layers) for c in chunks]
    return sum(weighted) / len(weighted), per_chunk, sparse_layers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--runs", type=int, default=len(RUNS), help="the first this many of RUNS")
    ap.add_argument("--only", nargs="+", help="runs as config:chunk (chunk 0 = one pass), the first must be dense:0")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        return table()
    if args.threads:
        torch.set_num_threads(args.threads)
    from benchmarks.fidelity import next_token_stats, text_ids
    from prism_mm import enable_prism
    from prism_mm.testing.weights import load_qwen_coder

    model, tok = load_qwen_coder(torch.float32)
    model.eval()
    LOGS.mkdir(exist_ok=True)
    for si in args.sample:
        texts = SAMPLES[si]
        ids = text_ids(tok, args.tokens, texts=texts)
        ref = None
        runs = RUNS[:args.runs] if not args.only else [
            (o.split(":")[0], int(o.split(":")[1]) or None) for o in args.only]
        for name, chunk in runs:
            cfg = config_of(name)
            print(f"sample {si} {'+'.join(texts)}: {name} chunk={chunk}", flush=True)
            if cfg is None:
                model.set_attn_implementation("sdpa")
            else:
                enable_prism(model, cfg, backend="torch")
            try:
                h, chunks, seconds = forward(model, ids, chunk)
            finally:
                model.set_attn_implementation("sdpa")
            t = time.perf_counter()
            ppl, top1 = next_token_stats(model, h, ids)
            head_s = time.perf_counter() - t
            if ref is None:
                ref = (ppl, top1)
            mean_d, per_chunk, sparse_layers = densities(chunks)
            row = {"sample": si, "texts": "+".join(texts), "tokens": args.tokens, "config": name,
                   "chunk": chunk, "ppl": ppl, "ppl_change_pct": 100 * (ppl / ref[0] - 1),
                   "top1_agreement": (top1 == ref[1]).float().mean().item(), "mean_density": mean_d,
                   "chunk_densities": per_chunk, "chunk_sparse_layers": sparse_layers,
                   "seconds": round(seconds, 1), "head_seconds": round(head_s, 1),
                   "threads": torch.get_num_threads()}
            print("  ", json.dumps(row), flush=True)
            with JSONL.open("a") as f:
                f.write(json.dumps(row) + "\n")


def table():
    rows, seen = [], set()
    for r in (json.loads(l) for l in JSONL.read_text().splitlines() if l.strip()):
        key = (r["sample"], r["config"], r["chunk"])
        if key not in seen:  # a rerun's reference row (dense one pass again) is listed once
            seen.add(key)
            rows.append(r)
    rows.sort(key=lambda r: (r["sample"], r["config"] != "dense", r["config"], -(r["chunk"] or 10 ** 9)))
    out = ["| sample | config | prefill | ppl | ppl change vs dense one pass | top-1 agreement vs dense one pass | "
           "mean density | per-chunk density | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pc = "" if not r["chunk_densities"] or len(r["chunk_densities"]) < 2 else \
            " ".join(f"{d:.2f}" for d in r["chunk_densities"])
        dens = "1 (dense)" if r["mean_density"] is None else f"{r['mean_density']:.3f}"
        out.append(f"| {r['sample']} ({r['texts']}, {r['tokens']}) | {r['config']} | "
                   f"{'one pass' if r['chunk'] is None else 'chunks of %d' % r['chunk']} | {r['ppl']:.5f} | "
                   f"{r['ppl_change_pct']:+.4f}% | {r['top1_agreement']:.4f} | {dens} | {pc} | {r['seconds']} |")
    MD.write_text("\n".join(out) + "\n")
    print(MD.read_text())


if __name__ == "__main__":
    main()
