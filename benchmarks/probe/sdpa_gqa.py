"""Which SDPA path is fastest for GQA on this GPU: enable_gqa=True or K/V repeated (cuDNN eligible)?"""
import torch
import torch.nn.functional as F
import triton

q = torch.randn(1, 28, 32768, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 4, 32768, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
ke, ve = k.repeat_interleave(7, 1), v.repeat_interleave(7, 1)
qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # the strided layout transformers hands over
for name, fn in [
    ("enable_gqa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)),
    ("repeat_kv", lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True)),
    ("repeat_kv+copy", lambda: F.scaled_dot_product_attention(q, k.repeat_interleave(7, 1), v.repeat_interleave(7, 1), is_causal=True)),
    ("strided q enable_gqa", lambda: F.scaled_dot_product_attention(qt, k, v, is_causal=True, enable_gqa=True)),
]:
    print(f"{name}: {triton.testing.do_bench(fn, return_mode='median'):.2f} ms", flush=True)
