"""Probe: block-level second-moment corrections of the mean-pooled score (fidelity harness, 5 layers of SmolLM2,
4096 tokens, block 64). If keys in a block scatter around their mean k_b with per-dimension variance v_b,
mean_j exp(s q.k_j) ~ exp(s q.k_b + s^2/2 sum_d q_d^2 v_bd) (Gaussian moment generating function); likewise for the
spread of the queries. Run: PYTHONPATH=. python benchmarks/probe/moment_estimators.py. Results: moment_estimators.txt.
- var_k: + s^2/2 (q_a^2 . v_b) (key spread), var_q: + s^2/2 (k_b^2 . u_a) (query spread), var_qk: both
- cov_k: full key covariance q_a^T C_b q_a (not block-level cheap; the bound of the Gaussian idea)
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
LAYERS = [2, 8, 14, 20, 26]
for L in LAYERS:
    q, k, v = cap[L]
    _, mass = layer_metrics(q, k, v, {}, bs)
    n, d, hq = q.shape[2], q.shape[3], q.shape[1]
    g, nb = hq // k.shape[1], n // bs
    valid = ref.causal_block_mask(n, n, bs)[None]
    qb, kb = q[0].float().view(hq, nb, bs, d), k[0].float().repeat_interleave(g, 0).view(hq, nb, bs, d)
    qm, km = qb.mean(2), kb.mean(2)
    qv, kv = qb.var(2, unbiased=False), kb.var(2, unbiased=False)
    s = 1 / math.sqrt(d)
    base = qm @ km.transpose(-1, -2) * s
    var_k = 0.5 * s * s * (qm * qm) @ kv.transpose(-1, -2)
    var_q = 0.5 * s * s * qv @ (km * km).transpose(-1, -2)
    kc = kb - km[:, :, None]
    cov = torch.einsum("hbjd,hbje->hbde", kc, kc) / bs  # [H, nb, d, d]
    cov_k = 0.5 * s * s * torch.einsum("had,hbde,hae->hab", qm, cov, qm)

    def add(name, logits, thr):
        probs = torch.softmax(logits.masked_fill(~valid, float("-inf")), -1)
        record(res, name, forced_top_p(probs, valid, thr), valid, mass)

    for thr in (0.85, 0.9, 0.93, 0.95):
        add(f"mp@{thr}", base, thr)
        add(f"var_k@{thr}", base + var_k, thr)
        add(f"var_q@{thr}", base + var_q, thr)
        add(f"var_qk@{thr}", base + var_k + var_q, thr)
        add(f"cov_k@{thr}", base + cov_k, thr)
        add(f"cov_k+var_q@{thr}", base + cov_k + var_q, thr)
        add(f"oracle@{thr}", torch.log(mass.clamp_min(1e-30)), thr)
for name, vals in sorted(res.items()):
    print(f"{name:20s} {sum(a for a, b in vals) / len(vals):.3f} {sum(b for a, b in vals) / len(vals):.3f}")
