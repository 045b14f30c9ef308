"""A/B of the estimation time (pool + select) between two checkouts of prism_mm, interleaved in one GPU session.

    python lab/estimation_ab.py [--old DIR LABEL] [--rounds N]   # N rounds (3) of: ... --one <pkg-parent-dir>
(default old: lab/ab, 07a73b6; e.g. --old .stage/old 7f10e18 after git archive 7f10e18 prism_mm | tar -x -C .stage/old)
Each round times prism_mm.selection.estimate at 32K and 128K for the Qwen2.5-VL / Qwen3-VL attention shapes
(median of triton.testing.do_bench) in a fresh process for the old and the new package.
"""
import json
import subprocess
import sys

import torch


def one():
    import triton

    from prism_mm import PrismConfig, RopeLayout
    from prism_mm.selection import estimate

    cfg = PrismConfig.video(min_sparse_len=0)
    bands = RopeLayout(head_dim=128, theta=1e6, mrope_section=(16, 24, 24)).bands(64, 96)
    res = {}
    for hq, hkv in ((28, 4), (32, 8)):
        for n in (32768, 131072):
            g = torch.Generator(device="cuda").manual_seed(0)
            q = torch.randn(1, hq, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(1, hkv, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
            fn = lambda: estimate(q, k, cfg, bands)  # noqa: E731
            res[f"{hq}/{hkv} {n // 1024}K"] = triton.testing.do_bench(fn, warmup=100, rep=500, return_mode="median")
    print(json.dumps(res))


if __name__ == "__main__":
    if "--one" in sys.argv:
        sys.path.insert(0, sys.argv[-1])
        one()
        sys.exit()
    old_dir, old_label = ("lab/ab", "07a73b6")
    if "--old" in sys.argv:
        i = sys.argv.index("--old")
        old_dir, old_label = sys.argv[i + 1], sys.argv[i + 2]
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    rows = []
    for r in range(rounds):
        for name, path in ((f"old {old_label}", old_dir), ("new", ".")):
            out = subprocess.run([sys.executable, __file__, "--one", path], capture_output=True, text=True, check=True)
            rows.append((r, name, json.loads(out.stdout.strip().splitlines()[-1])))
            print(r, name, rows[-1][2], flush=True)
