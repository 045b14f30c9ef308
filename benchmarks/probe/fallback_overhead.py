"""Probe: what one decoder layer's attention costs through the "prism" interface when the selection is denser than
max_density (dense fallback), against transformers' own SDPA path, at the video_qa compare shape (35,880 tokens,
Qwen2.5-VL-7B: 28/4 heads, head_dim 128, bf16, strided q/k/v as transformers hands them over).
Run on a GPU: PYTHONPATH=. python benchmarks/probe/fallback_overhead.py. Results: fallback_overhead-h100.txt."""
import dataclasses

import torch
import triton
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from prism_mm import PrismConfig, RopeLayout
from prism_mm.attention import PrismLayer, prism_attention_forward, register_with_transformers
from prism_mm.selection import estimate
from prism_mm.stats import PrismRunStats

register_with_transformers()
n, hq, hkv, d = 35880, 28, 4, 128
q = torch.randn(1, n, hq, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
k = torch.randn(1, n, hkv, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
v = torch.randn(1, n, hkv, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
cfg = PrismConfig.video()
bands = RopeLayout(head_dim=d, theta=1e6, mrope_section=(16, 24, 24)).bands(*cfg.band_dims(d))
module = torch.nn.Module()
module.layer_idx, module.is_causal, module.num_key_value_groups, module.training = 0, True, hq // hkv, False
scaling = d ** -0.5


def ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


rows = {
    "transformers sdpa_attention_forward": lambda: sdpa_attention_forward(module, q, k, v, None, scaling=scaling),
    "estimate() alone": lambda: estimate(q, k, cfg, bands),
}
module.prism = PrismLayer(cfg, bands, PrismRunStats())
rows["prism interface, max_density fallback"] = lambda: prism_attention_forward(module, q, k, v, None, scaling=scaling)
for name, fn in rows.items():
    print(f"{name}: {ms(fn):.2f} ms", flush=True)
module.prism = PrismLayer(dataclasses.replace(cfg, max_density=1.0), bands, PrismRunStats())
print(f"prism interface, sparse kernel at density ~1: {ms(lambda: prism_attention_forward(module, q, k, v, None, scaling=scaling)):.2f} ms")
