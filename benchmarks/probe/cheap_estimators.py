"""Probe: cheaper stand-ins for the pooled-query x key-token LSE score (fidelity harness, 5 layers of SmolLM2, 4096 tokens,
block 64). Run: PYTHONPATH=. python benchmarks/probe/cheap_estimators.py. Results: cheap_estimators.txt."""
import torch, math
from benchmarks.fidelity import *
from prism_mm.kernels import reference as ref
model, tok = load_smollm2()
ids = text_ids(tok, 4096)
cap = capture_qkv(model, ids)
bs=64
res={}
def topp(p, valid, thr): return ref.top_p_mask(p, valid.expand_as(p), thr)
for L in [2, 8, 14, 20, 26]:
    q,k,v = cap[L]
    _, mass = layer_metrics(q,k,v,{},bs)
    n=q.shape[2]; d=q.shape[3]; hq=q.shape[1]; g=hq//k.shape[1]; nb=n//bs
    valid = ref.causal_block_mask(n,n,bs)[None]
    qb = q[0].float().view(hq, nb, bs, d); kb = k[0].float().repeat_interleave(g,0).view(hq, nb, bs, d)
    qm, km = qb.mean(2), kb.mean(2)
    def add(name, mask):
        mask = mask.clone(); mask[...,0]=True; idx=torch.arange(nb); mask[:, idx, idx]=True; mask &= valid
        res.setdefault(name, []).append(((mask.sum()/(valid.sum()*hq)).item(), (mass*mask).sum(-1).mean().item()))
    def sm(lg): return torch.softmax(lg.masked_fill(~valid, float('-inf')), -1)
    for thr in (0.9, 0.93):
        add(f"mp@{thr}", topp(sm(qm @ km.transpose(-1,-2)/math.sqrt(d)), valid, thr))
        st = (qm @ kb.reshape(hq,n,d).transpose(-1,-2)/math.sqrt(d)).view(hq, nb, nb, bs)
        add(f"lsek@{thr}", topp(sm(torch.logsumexp(st,-1)), valid, thr))
        for s in (4, 8, 16):
            # s strided key tokens per block
            sub = st[..., ::bs//s]
            add(f"lsek_stride{s}@{thr}", topp(sm(torch.logsumexp(sub,-1) + math.log(bs/s)), valid, thr))
            # s keys of largest norm per block (a per-block static choice, query independent)
            norms = kb.norm(dim=-1)                       # [H, nb, bs]
            top = norms.topk(s, -1).indices               # [H, nb, s]
            sel = torch.gather(st, -1, top[:, None].expand(hq, nb, nb, s))
            lse_top = torch.logsumexp(sel, -1)
            # combine: top-s exact + mean for the rest
            rest = (qm @ km.transpose(-1,-2)/math.sqrt(d)) + math.log(bs - s)
            add(f"topnorm{s}+mean@{thr}", topp(sm(torch.logaddexp(lse_top, rest)), valid, thr))
        add(f"oracle@{thr}", topp(mass, valid, thr))
for k_,v_ in sorted(res.items()):
    print(k_, round(sum(a for a,b in v_)/len(v_),3), round(sum(b for a,b in v_)/len(v_),3))
