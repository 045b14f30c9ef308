"""Where the host time of one sparse Prism call goes: every Python step of prism_attention_forward timed alone, and
each of the three Triton launches four ways (our op; the JIT launch with its arguments ready; the compiled kernel's
own runner; its launcher called raw), GPU held busy as in host_probe.py. One JSON line per measurement.

    python lab/launch_probe.py --tokens 33536 > launch.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import triton

import prism_mm
from prism_mm import PrismConfig

sys.path.append(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))
from host_probe import host_us  # noqa: E402

from benchmarks.video_e2e import sleep_cycles_per_ms  # noqa: E402


def capture(jit_fn, call):
    """(args, kwargs, grid) of jit_fn's launch inside call()."""
    seen = {}
    orig = jit_fn.run

    def spy(*args, grid, warmup, **kwargs):
        seen.update(args=args, kwargs=kwargs, grid=grid)
        return orig(*args, grid=grid, warmup=warmup, **kwargs)

    jit_fn.run = spy
    try:
        call()
    finally:
        del jit_fn.run
    return seen["args"], seen["kwargs"], seen["grid"]


def launch_variants(name, jit_fn, call, cpm, emit, n):
    from triton.runtime.driver import driver

    args, kwargs, grid = capture(jit_fn, call)
    compiled = jit_fn[grid](*args, **kwargs)
    device = driver.active.get_current_device()
    binder = jit_fn.device_caches[device][4]
    bound = tuple(binder(*args, **kwargs)[0].values())
    g = tuple(grid) + (1,) * (3 - len(grid))
    stream = driver.active.get_current_stream(device)
    cases = {
        f"{name}: op": call,
        f"{name}: jit[grid](args ready)": lambda: jit_fn[grid](*args, **kwargs),
        f"{name}: binder only": lambda: binder(*args, **kwargs),
        f"{name}: compiled[grid](bound)": lambda: compiled[grid](*bound),
        f"{name}: compiled.run raw": lambda: compiled.run(g[0], g[1], g[2], stream, compiled.function,
                                                            compiled.packed_metadata, None, None, None, *bound),
        f"{name}: get_current_stream": lambda: driver.active.get_current_stream(device),
    }
    for case, fn in cases.items():
        try:
            emit({"what": "launch", "name": case, "tokens": n, "args": len(bound),
                  "host_us": host_us(fn, cpm, calls=3 if "attention" in name else 10)})
        except Exception as e:  # noqa: BLE001 - a probe: record and go on
            emit({"what": "launch", "name": case, "error": repr(e)[:300]})
    return compiled, bound, grid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[33536])
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    cpm = sleep_cycles_per_ms()

    def emit(rec):
        print(json.dumps({"label": args.label, **rec}), flush=True)

    emit({"what": "gpu", "name": torch.cuda.get_device_name(), "torch": torch.__version__,
          "triton": triton.__version__, "prism_mm": prism_mm.__file__})
    from prism_mm.attention import PrismLayer, _attend, check_qkv, fallback_reason, prism_attention_forward
    from prism_mm.kernels import block_sparse, estimate as est_mod, ops as kernel_ops, pool
    from prism_mm.kernels.layout import SelectSpec
    from prism_mm.selection import _spec, band_index, estimate
    from prism_mm.spectral import RopeLayout
    from prism_mm.stats import PrismRunStats, PrismStats

    dev = torch.device("cuda")
    for n in args.tokens:
        b, hq, hkv, d = 1, 28, 4, 128
        q = torch.randn(b, n, hq, d, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        k = torch.randn(b, hkv, n, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        cfg = PrismConfig.video(min_sparse_len=0)
        bands = RopeLayout(head_dim=d).bands(*cfg.band_dims(d))
        ops = kernel_ops("triton", dev)
        bi = band_index(bands, d, dev)
        pq, pk = ops.pool_pair(q, k, cfg.block_size, bi)
        spec = SelectSpec(head_dim=d, block_size=cfg.block_size, threshold_high=cfg.threshold_high,
                          threshold_low=cfg.threshold_low)
        sel = ops.select_blocks(pq, pk, spec, n, n)
        out = torch.empty(b, n, hq, d, device=dev, dtype=q.dtype).transpose(1, 2)

        class Module(torch.nn.Module):
            layer_idx = 0

        mod = Module()
        mod.prism = PrismLayer(cfg, bands, PrismRunStats())
        st = PrismStats.of_selection(sel)
        run_stats = PrismRunStats()
        steps = {
            "prism_attention_forward": lambda: prism_attention_forward(mod, q, k, v, None, scaling=d ** -0.5),
            "_attend": lambda: _attend(q, k, v, cfg, bands, d ** -0.5, ops, ""),
            "estimate()": lambda: estimate(q, k, cfg, bands, ops),
            "fallback_reason": lambda: fallback_reason(cfg, n, n, None, None, 0.0),
            "check_qkv": lambda: check_qkv(q, k, v),
            "kernel_ops lookup": lambda: kernel_ops("auto", q.device),
            "band_index (lru)": lambda: band_index(bands, d, q.device),
            "_spec": lambda: _spec(q, cfg),
            "out buffer empty+transpose": lambda: torch.empty(b, n, hq, d, device=dev, dtype=q.dtype).transpose(1, 2),
            "torch.empty small int32": lambda: torch.empty(b, hq, 262, device=dev, dtype=torch.int32),
            "PrismStats.of_selection": lambda: PrismStats.of_selection(sel),
            "PrismRunStats.record": lambda: run_stats.record(0, st),
            "pool _outputs": lambda: pool._outputs([q, k], cfg.block_size, bi.high_idx.numel(), bi.low_idx.numel()),
            "pool _check x2": lambda: (pool._check(q, bi), pool._check(k, bi)),
            "select ladder()": lambda: est_mod.ladder(262, 262, n, n, 128),
            "selection.check": lambda: sel.check(b, hq, n, n),
            "tma_supported": lambda: block_sparse.tma_supported(q, k, v),
            "rows_descriptor x2": lambda: (block_sparse.rows_descriptor(k, 64), block_sparse.rows_descriptor(v, 64)),
            "default_tiles": lambda: block_sparse.default_tiles(128, d, True),
            "q.stride() x4": lambda: (q.stride(), k.stride(), v.stride(), out.stride()),
            "q.data_ptr()": lambda: q.data_ptr(),
            "torch.cuda.current_device": lambda: torch.cuda.current_device(),
        }
        for name, fn in steps.items():
            try:
                heavy = name in ("prism_attention_forward", "_attend")
                emit({"what": "step", "name": name, "tokens": n, "host_us": host_us(fn, cpm, calls=3 if heavy else 20)})
            except Exception as e:  # noqa: BLE001
                emit({"what": "step", "name": name, "error": repr(e)[:300]})

        launch_variants("pool_pair", pool._pool_bands_kernel, lambda: ops.pool_pair(q, k, cfg.block_size, bi), cpm, emit, n)
        launch_variants("select_blocks", est_mod._select_kernel, lambda: ops.select_blocks(pq, pk, spec, n, n), cpm, emit, n)
        compiled, bound, grid = launch_variants(
            "block_sparse_attention", block_sparse._block_sparse_fwd,
            lambda: ops.block_sparse_attention(q, k, v, sel, None, out), cpm, emit, n)
        # the compiled runner writes what the JIT launch writes
        ref = ops.block_sparse_attention(q, k, v, sel, None, torch.empty_like(out)).clone()
        out.zero_()
        compiled[grid](*bound)
        torch.cuda.synchronize()
        emit({"what": "check", "name": "compiled runner == op", "equal": bool(torch.equal(out, ref))})
        del q, k, v, out, pq, pk, sel
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
