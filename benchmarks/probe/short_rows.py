"""Probe: the fixed cost of one query tile (program) of the sparse kernel, against the cost of one key tile.

Masks with exactly k key blocks per query block (k = 0 is every row empty: launch, prologue and epilogue
only), with the diagonal block ("diag": diagonal + k-1 random earlier blocks) or without it ("nodiag":
k random earlier blocks, no causal masking at all), at 32K tokens, Qwen2.5-VL shape (28/4 heads, d 128,
block 128). A linear fit time = a + b * key_tiles per variant separates the per-program cost from the
per-tile cost. Run on a GPU: PYTHONPATH=. python benchmarks/probe/short_rows.py [variant ...] (names: benchmarks.variants.ATTN)
Result: short_rows-h100.txt, measured with variant names of that sweep: base = device-built descriptors
(now "device-desc"), rows = host-built row descriptors (now "host-desc", the default), rows-q / pf / tail-s1 =
options since removed (TMA query loads, L2 prefetch of the next query tile, unpipelined tail; NOTES.md).
"""
import sys

import torch

from benchmarks.kernels import BS, D, bench
from benchmarks.variants import ATTN
from prism_mm.kernels import reference as ref
from prism_mm.kernels.block_sparse import block_sparse_attention

N, HQ, HKV = 32768, 28, 4
SLOTS = 2 * torch.cuda.get_device_properties(0).multi_processor_count  # two programs per SM


def k_block_mask(k: int, diagonal: bool, gen) -> torch.Tensor:
    """[1, HQ, NB, NB]: per query block, min(k, available) random causal blocks (+ the diagonal)."""
    nb = N // BS
    rows = torch.arange(nb, device="cuda")
    earlier = rows[None, :, None] > rows[None, None, :]  # strictly below the diagonal
    score = torch.rand(HQ, nb, nb, generator=gen, device="cuda").masked_fill(~earlier, -1.0)
    take = k - 1 if diagonal else k
    mask = torch.zeros(HQ, nb, nb, dtype=torch.bool, device="cuda")
    if take > 0:
        top = score.topk(min(take, nb), dim=-1)
        mask.scatter_(-1, top.indices, top.values >= 0)
    if diagonal and k > 0:
        mask[:, rows, rows] = True
    return mask[None]


def main(names):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, HQ, N, D, device="cuda", dtype=torch.bfloat16)
    kk, v = (torch.randn(1, HKV, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty(1, N, HQ, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    programs = HQ * (N // BS)
    print(f"{torch.cuda.get_device_name()}: {N} tokens, {HQ}/{HKV} heads, {programs} programs, {SLOTS} slots")
    for diagonal in (True, False):
        for name in names:
            pts = []
            for k in (0, 1, 2, 4, 8, 16, 32):
                if k == 0 and not diagonal:
                    continue
                mask = k_block_mask(k, diagonal, gen)
                cnt, idx = ref.indices_from_block_mask(mask)
                tiles = 2 * mask.sum().item()  # 64-key tiles
                ms = bench(lambda: block_sparse_attention(q, kk, v, cnt, idx, BS, out=out, tiles=ATTN[name]))
                per_prog = 1000 * ms * SLOTS / programs
                pts.append((tiles, ms))
                print(f"{'diag' if diagonal else 'nodiag'} {name} k={k}: {ms:.3f} ms, {tiles / programs:.1f} tiles/program, "
                      f"{per_prog:.2f} us per program-slot", flush=True)
            x = torch.tensor([p[0] for p in pts], dtype=torch.float64)
            y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
            A = torch.stack([torch.ones_like(x), x], 1)
            a, b = torch.linalg.lstsq(A, y[:, None]).solution[:, 0].tolist()
            print(f"  fit {'diag' if diagonal else 'nodiag'} {name}: per program-slot {1000 * a * SLOTS / programs:.2f} us, "
                  f"per tile-slot {1000 * b * SLOTS:.3f} us")


if __name__ == "__main__":
    main(sys.argv[1:] or ["host-desc", "device-desc"])
