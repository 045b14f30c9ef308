"""Peak memory of the CPU attention twin (issue 13): 32K tokens, 14 query / 2 KV heads, head_dim 64, fp32,
random causal selection at density 0.2. Run under /usr/bin/time -v and read "Maximum resident set size":

    /usr/bin/time -v .venv/bin/python lab/rss_torch_twin.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from generators import random_selection  # noqa: E402

from prism_mm.kernels import torch_ops  # noqa: E402

torch.manual_seed(0)
L, HQ, HKV, D, BS = 32768, 14, 2, 64, 128
q = torch.randn(1, HQ, L, D)
k, v = torch.randn(1, HKV, L, D), torch.randn(1, HKV, L, D)
sel = random_selection(1, HQ, L, L, BS, 0.2)
print(f"inputs {3 * q.numel() * 4 / 2**30:.2f} GiB (q, k, v as if all 14 heads), density {float(sel.density().mean()):.3f}")
t0 = time.perf_counter()
out = torch_ops.block_sparse_attention(q, k, v, sel, None)
print(f"torch twin: {time.perf_counter() - t0:.1f} s, out {tuple(out.shape)}, finite {bool(torch.isfinite(out).all())}")
