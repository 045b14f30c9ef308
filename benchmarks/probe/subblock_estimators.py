"""Probe: sub-block summaries between mean pooling (one vector per 64-token block) and the token-level scores of
fidelity --analysis (fidelity harness, 5 layers of SmolLM2, 4096 tokens, block 64).
Run: PYTHONPATH=. python benchmarks/probe/subblock_estimators.py. Results: subblock_estimators.txt.
- lsesub{s}: pooled query vs means of s-token key sub-blocks, LSE over the sub-blocks (+ log s)
- maxk: pooled query vs every key token, max per key block
- coarse{s}: attention at s-token resolution (query and key sub-block means, causal softmax per query
  sub-block over key sub-blocks), mass summed per key block and averaged over the query block
"""
import math

import torch

from benchmarks.fidelity import capture_qkv, forced_top_p, layer_metrics, load_smollm2, text_ids
from benchmarks.probe.harness import record
from prism_mm.kernels import reference as ref

model, tok = load_smollm2()
ids = text_ids(tok, 4096)
cap = capture_qkv(model, ids)
bs = 64
res = {}
for L in [2, 8, 14, 20, 26]:
    q, k, v = cap[L]
    _, mass = layer_metrics(q, k, v, {}, bs)
    n, d, hq = q.shape[2], q.shape[3], q.shape[1]
    g, nb = hq // k.shape[1], n // bs
    valid = ref.causal_block_mask(n, n, bs)[None]
    qf, kf = q[0].float(), k[0].float().repeat_interleave(g, 0)
    qm, km = qf.view(hq, nb, bs, d).mean(2), kf.view(hq, nb, bs, d).mean(2)
    sc = 1 / math.sqrt(d)

    def add(name, probs, thr):
        record(res, name, forced_top_p(probs, valid, thr), valid, mass)

    def sm(lg):
        return torch.softmax(lg.masked_fill(~valid, float("-inf")), -1)

    st = (qm @ kf.transpose(-1, -2) * sc).view(hq, nb, nb, bs)
    for thr in (0.9, 0.93):
        add(f"mp@{thr}", sm(qm @ km.transpose(-1, -2) * sc), thr)
        add(f"lsek@{thr}", sm(torch.logsumexp(st, -1)), thr)
        add(f"maxk@{thr}", sm(st.amax(-1)), thr)
        add(f"oracle@{thr}", mass, thr)
        for s in (4, 8, 16, 32):
            ks = kf.view(hq, n // s, s, d).mean(2)
            ls = (qm @ ks.transpose(-1, -2) * sc).view(hq, nb, nb, bs // s)
            add(f"lsesub{s}@{thr}", sm(torch.logsumexp(ls, -1) + math.log(s)), thr)
            qs = qf.view(hq, n // s, s, d).mean(2)
            a = qs @ ks.transpose(-1, -2) * sc  # [H, n/s, n/s]
            a = a.masked_fill(torch.ones(n // s, n // s, dtype=torch.bool).tril().logical_not(), float("-inf"))
            p = torch.softmax(a, -1).view(hq, nb, bs // s, nb, bs // s).sum(-1).mean(2)
            add(f"coarse{s}@{thr}", p, thr)
for name, vals in sorted(res.items()):
    print(f"{name:18s} {sum(a for a, b in vals) / len(vals):.3f} {sum(b for a, b in vals) / len(vals):.3f}")
