"""Host and GPU time of the sparse kernel's launch per K/V access mode (DESC 2: descriptors built on the host and
encoded by Triton's launcher on every launch; 1: built on the device; 0: pointer loads), at n tokens, Qwen2.5-VL-7B
attention shapes. Explicit tiles, so every variant also pays for its launch plan (no plan cache). JSON lines.

    python lab/desc_probe.py --tokens 33536
"""
from __future__ import annotations

import sys
from pathlib import Path

import triton

sys.path.append(str(Path(__file__).resolve().parent))
from host_probe import attention_inputs, host_us, probe_cli  # noqa: E402


def main():
    args, cpm, emit = probe_cli()
    from prism_mm.kernels import block_sparse as bs

    for n in args.tokens:
        a = attention_inputs(n)
        for desc in (2, 1, 0):
            tiles = {**bs.default_tiles(a.cfg.block_size, a.d, True), "DESC": desc}
            fn = lambda: bs.launch(a.q, a.k, a.v, a.sel, None, a.out, tiles)  # noqa: E731
            emit({"what": "sparse launch", "desc": desc, "tokens": n, "host_us": host_us(fn, cpm, calls=3),
                  "gpu_ms": triton.testing.do_bench(fn, warmup=20, rep=200, return_mode="median")})
        fn = lambda: bs.launch(a.q, a.k, a.v, a.sel, None, a.out)  # noqa: E731
        emit({"what": "sparse launch", "desc": "default (plan cached)", "tokens": n, "host_us": host_us(fn, cpm, calls=3)})


if __name__ == "__main__":
    main()
