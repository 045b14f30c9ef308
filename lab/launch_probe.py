"""Where the host time of one sparse Prism call goes: every Python step of prism_attention_forward timed alone, and
each of the three Triton launches four ways (our op; the JIT launch with its arguments ready; the compiled kernel's
own runner; its launcher called raw), GPU held busy as in host_probe.py. One JSON line per measurement.

    python lab/launch_probe.py --tokens 33536 > launch.jsonl
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))
from host_probe import attention_inputs, host_us, probe_cli  # noqa: E402


def capture(jit_fn, call):
    """(args, kwargs, grid) of jit_fn's launch inside call() (any CachedLaunch of it off meanwhile, so that the launch
    reaches Triton's dispatch)."""
    from prism_mm.kernels.launch import CachedLaunch

    module = sys.modules[jit_fn.fn.__module__]
    cached = [c for c in vars(module).values() if isinstance(c, CachedLaunch) and c.fn is jit_fn]
    seen = {}
    orig = jit_fn.run

    def spy(*args, grid, warmup, **kwargs):
        seen.update(args=args, kwargs=kwargs, grid=grid)
        return orig(*args, grid=grid, warmup=warmup, **kwargs)

    jit_fn.run = spy
    states = [c.enabled for c in cached]
    for c in cached:
        c.enabled = False
    try:
        call()
    finally:
        del jit_fn.run
        for c, state in zip(cached, states):
            c.enabled = state
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
        f"{name}: compiled[grid](bound)": lambda: compiled[g](*bound),
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
    args, cpm, emit = probe_cli()
    from prism_mm.attention import _attend, check_qkv, fallback_reason
    from prism_mm.kernels import block_sparse, estimate as est_mod, ops as kernel_ops, pool
    from prism_mm import selection as selection_module
    from prism_mm.selection import band_index, estimate

    def _spec(q, cfg):  # older trees: selection._spec; from 2026-12-02 on: selection.recipe
        old = getattr(selection_module, "_spec", None)
        return old(q, cfg) if old is not None else selection_module.recipe(q, cfg, bands)[0]
    from prism_mm.stats import PrismRunStats, PrismStats

    for n in args.tokens:
        a = attention_inputs(n)
        dev, b, hq, d, q, k, v, cfg, bands, ops, bi = a.dev, a.b, a.hq, a.d, a.q, a.k, a.v, a.cfg, a.bands, a.ops, a.bi
        pq, pk, spec, sel, out = a.pq, a.pk, a.spec, a.sel, a.out
        st = PrismStats.of_selection(sel)
        run_stats = PrismRunStats()
        steps = {
            "prism_attention_forward": a.prism_forward,
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
        compiled[(*grid, 1, 1)[:3]](*bound)  # the compiled kernel's runner wants a 3-D grid
        torch.cuda.synchronize()
        emit({"what": "check", "name": "compiled runner == op", "equal": bool(torch.equal(out, ref))})


if __name__ == "__main__":
    main()
