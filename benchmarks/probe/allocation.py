"""Probe: is the gap between mean pooling and the oracle in *which* blocks a row keeps (ranking) or in *how many*
(allocation across rows and heads)? Fidelity harness, 5 layers of SmolLM2, 4096 tokens, block 64.
- mp_rank+oracle_count: per row, as many blocks as the oracle keeps, ranked by mean-pooled scores
- oracle_rank+mp_count: per row, as many blocks as mean pooling keeps, ranked by the true mass
- mpT{t}: mean pooling with logits scaled by t (sharper/flatter softmax -> different top-p allocation)
Gap closed = (recall - mp recall) / (oracle recall - mp recall), both interpolated at the method's density.
Run: PYTHONPATH=. python benchmarks/probe/allocation.py. Results: allocation.txt."""
import math

import numpy as np
import torch

from benchmarks.fidelity import capture_qkv, forced_top_p, layer_metrics, load_smollm2, text_ids, with_sink_diag
from benchmarks.probe.harness import record
from prism_mm.kernels import reference as ref

model, tok = load_smollm2()
ids = text_ids(tok, 4096)
cap = capture_qkv(model, ids)
bs = 64
THR = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
res = {}


def take_count(scores, counts, valid):
    """Per row, the `counts` highest-scoring valid blocks."""
    order = scores.masked_fill(~valid, float("-inf")).argsort(-1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))
    return rank < counts[..., None]


for L in [2, 8, 14, 20, 26]:
    q, k, v = cap[L]
    _, mass = layer_metrics(q, k, v, {}, bs)
    n, d, hq = q.shape[2], q.shape[3], q.shape[1]
    g, nb = hq // k.shape[1], n // bs
    valid = ref.causal_block_mask(n, n, bs)[None].expand(hq, nb, nb)
    qm = q[0].float().view(hq, nb, bs, d).mean(2)
    km = k[0].float().repeat_interleave(g, 0).view(hq, nb, bs, d).mean(2)
    base = qm @ km.transpose(-1, -2) / math.sqrt(d)

    def add(name, mask):
        record(res, name, mask, valid, mass)

    def probs(lg):
        return torch.softmax(lg.masked_fill(~valid, float("-inf")), -1)

    for thr in THR:
        mp = forced_top_p(probs(base), valid, thr)
        orc = forced_top_p(mass, valid, thr)
        add(f"mp@{thr}", mp)
        add(f"oracle@{thr}", orc)
        add(f"mp_rank+oracle_count@{thr}", with_sink_diag(take_count(base, orc.sum(-1), valid), valid))
        add(f"oracle_rank+mp_count@{thr}", with_sink_diag(take_count(mass, mp.sum(-1), valid), valid))
        for t in (0.5, 0.75, 1.5, 2.0):
            add(f"mpT{t}@{thr}", forced_top_p(probs(base * t), valid, thr))

curves = {}
for name, vals in res.items():
    m, thr = name.split("@")
    curves.setdefault(m, []).append((np.mean([a for a, b in vals]), np.mean([b for a, b in vals])))
ref_mp, ref_or = sorted(curves["mp"]), sorted(curves["oracle"])


def at(curve, x):
    xs, ys = zip(*curve)
    return float(np.interp(x, xs, ys))


for m, pts in sorted(curves.items()):
    closed = [(r - at(ref_mp, dn)) / (at(ref_or, dn) - at(ref_mp, dn)) for dn, r in sorted(pts)]
    print(f"{m:24s}", " ".join(f"{dn:.3f}/{r:.3f}({c:+.0%})" for (dn, r), c in zip(sorted(pts), closed)))
