"""Probe: are the default sparse-kernel tiles (tuned at head_dim 128) sane at head_dim 64 and 256?
Density 1.0 and 0.1 at 32K tokens, 28 / 4 heads, bf16, against SDPA cuDNN dense causal, for the default and a
few alternative tile shapes. Run on a GPU: PYTHONPATH=. python benchmarks/probe/head_dims.py
Result: head_dims-h100.txt."""
import torch

from benchmarks.kernels import BS, bench, realistic_mask, sdpa_runner
from prism_mm.kernels import reference as ref
from prism_mm.kernels.block_sparse import block_sparse_attention, default_tiles

N, HQ, HKV = 32768, 28, 4
ALTERNATIVES = {
    64: {"m128n128w8s2-r128": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, maxnreg=128, DESC=2),
         "m128n64w4s2": dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2, DESC=2),
         "m128n64w8s3-r128": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, maxnreg=128, DESC=2)},
    256: {"m64n64w4s2": dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, DESC=2),
          "m128n32w8s2": dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=2, DESC=2),
          "m64n32w4s3": dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3, DESC=2)},
}


def main():
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(torch.cuda.get_device_name())
    for d, alts in ALTERNATIVES.items():
        q = torch.randn(1, HQ, N, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, HKV, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        dense = bench(sdpa_runner(q, k, v, "cudnn"))
        print(f"d={d}: cuDNN dense {dense:.3f} ms; default tiles {default_tiles(BS, d, True)}")
        for density in (1.0, 0.1):
            cnt, idx = ref.indices_from_block_mask(realistic_mask(HQ, N, density, gen))
            for name, tiles in {"default": None, **alts}.items():
                try:
                    ms = bench(lambda: block_sparse_attention(q, k, v, cnt, idx, BS, tiles=tiles))
                    print(f"  d={d} density {density} {name}: {ms:.3f} ms = {dense / ms:.2f}x cuDNN dense", flush=True)
                except Exception as e:  # noqa: BLE001 - a failing shape is a result too
                    print(f"  d={d} density {density} {name}: FAILED {type(e).__name__}: {str(e)[:120]}")


if __name__ == "__main__":
    main()
