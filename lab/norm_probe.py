"""GPU time of one RMSNorm at Qwen-VL sizes: transformers' Qwen2_5_VLRMSNorm module, prism_mm's FusedRMSNorm (Triton)
and torch.nn.functional.rms_norm (torch's own fused kernel, one rounding fewer), bf16. JSON lines.

    python lab/norm_probe.py
"""
import json

import torch
import triton
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm

from prism_mm.norms import FusedRMSNorm

print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}))
for rows, cols, what in ((263_424, 1280, "Qwen2.5-VL-7B tower, 128K visual tokens"),
                         (131_264, 3584, "Qwen2.5-VL-7B decoder, 128K"), (131_264, 4096, "Qwen3-VL-8B decoder, 128K")):
    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    ref = Qwen2_5_VLRMSNorm(cols, eps=1e-6).to("cuda", torch.bfloat16)
    fused = FusedRMSNorm(ref.weight, 1e-6)
    cases = {"transformers": lambda: ref(x), "prism_mm fused": lambda: fused(x),
             "F.rms_norm": lambda: torch.nn.functional.rms_norm(x, (cols,), ref.weight, 1e-6)}
    with torch.no_grad():
        res = {k: triton.testing.do_bench(f, warmup=25, rep=200, return_mode="median") for k, f in cases.items()}
        err = (fused(x).float() - ref(x).float()).abs().max().item()
    print(json.dumps({"shape": [rows, cols], "what": what, "ms": res,
                      "speedup_vs_transformers": res["transformers"] / res["prism_mm fused"], "max_abs_diff": err}))
