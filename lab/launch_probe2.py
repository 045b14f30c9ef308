"""Round 2 of launch_probe.py: section times inside replicas of the three op launchers and of
prism_attention_forward (perf_counter_ns checkpoints, GPU held busy), the same call timed at several points of
the run and with the garbage collector off. One JSON line per measurement.

    python lab/launch_probe2.py --tokens 33536 > launch2.jsonl
"""
from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))
from host_probe import attention_inputs, host_us, probe_cli  # noqa: E402


class Marks:
    def __init__(self):
        self.sections: dict[str, list[float]] = {}
        self.t = 0

    def start(self):
        self.t = time.perf_counter_ns()

    def __call__(self, name):
        now = time.perf_counter_ns()
        self.sections.setdefault(name, []).append((now - self.t) / 1e3)
        self.t = time.perf_counter_ns()


def sections(fn, marks: Marks, cpm, calls=3, rounds=15):
    fn(marks)
    torch.cuda.synchronize()
    marks.sections.clear()
    for _ in range(rounds):
        torch.cuda._sleep(int(40 * cpm))
        for _ in range(calls):
            fn(marks)
        torch.cuda.synchronize()
    return {k: statistics.median(v) for k, v in marks.sections.items()}


def main():
    args, cpm, emit = probe_cli()
    from prism_mm.attention import _attend, check_qkv, fallback_reason
    from prism_mm.kernels import block_sparse as bs, ops as kernel_ops, pool
    from prism_mm.kernels.layout import next_pow2, num_blocks
    from prism_mm.stats import PrismStats

    for n in args.tokens:
        a = attention_inputs(n)
        dev, b, hq, d, q, k, v, cfg, bands, ops, bi = a.dev, a.b, a.hq, a.d, a.q, a.k, a.v, a.cfg, a.bands, a.ops, a.bi
        sel, out, mod = a.sel, a.out, a.mod
        paf = a.prism_forward
        emit({"what": "order", "name": "prism_attention_forward first", "host_us": host_us(paf, cpm, calls=3)})
        emit({"what": "order", "name": "_attend", "host_us": host_us(lambda: _attend(q, k, v, cfg, bands, d ** -0.5, ops, ""), cpm, calls=3)})
        emit({"what": "order", "name": "prism_attention_forward again", "host_us": host_us(paf, cpm, calls=3)})
        emit({"what": "order", "name": "prism_attention_forward calls=10", "host_us": host_us(paf, cpm, calls=10, sleep_ms=60)})
        gc.disable()
        emit({"what": "order", "name": "prism_attention_forward gc off", "host_us": host_us(paf, cpm, calls=3)})
        emit({"what": "order", "name": "block_sparse op gc off", "host_us": host_us(lambda: ops.block_sparse_attention(q, k, v, sel, None, out), cpm, calls=3)})
        gc.enable()
        emit({"what": "order", "name": "block_sparse op", "host_us": host_us(lambda: ops.block_sparse_attention(q, k, v, sel, None, out), cpm, calls=3)})
        emit({"what": "order", "name": "block_sparse bs.launch direct", "host_us": host_us(lambda: bs.launch(q, k, v, sel, None, out), cpm, calls=3)})
        emit({"what": "order", "name": "pool_pair op", "host_us": host_us(lambda: ops.pool_pair(q, k, cfg.block_size, bi), cpm, calls=10)})
        emit({"what": "order", "name": "pool_pair op calls=3", "host_us": host_us(lambda: ops.pool_pair(q, k, cfg.block_size, bi), cpm, calls=3)})

        def bs_replica(m):
            m.start()
            hkv_, kv_len = k.shape[1], k.shape[2]
            sel.check(b, hq, n, kv_len)
            m("check")
            scale = 1.0 / math.sqrt(d)
            cfg_t = bs.default_tiles(128, d, bs.tma_supported(q, k, v))
            m("tiles+tma_supported")
            views = [bs.rows_descriptor(t, cfg_t["BLOCK_N"]) for t in (k, v)]
            (k_arg, *k_rows), (v_arg, *v_rows) = views
            m("descriptors")
            grid = (num_blocks(n, cfg_t["BLOCK_M"]) * b * hq,)
            argv = (q, k_arg, v_arg, out, sel.kv_num_blocks, sel.kv_indices, scale * 1.4426950408889634,
                    *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                    *sel.kv_num_blocks.stride(), *sel.kv_indices.stride()[:3],
                    hq, hq // hkv_, n, kv_len, *k_rows, *v_rows)
            m("args")
            launcher = getattr(bs, "sparse_launch", getattr(bs, "_sparse_launch", bs._block_sparse_fwd))  # CachedLaunch where the tree has it
            launcher[grid](*argv, HEAD_DIM=d, D_P2=next_pow2(d), SEL_BLOCK=128, **cfg_t)
            m("launch")

        for name, val in sections(bs_replica, Marks(), cpm).items():
            emit({"what": "section", "op": "block_sparse", "name": name, "host_us": val})

        def pool_replica(m):
            m.start()
            outs = pool._launch([q, k], 128, bi)
            m("pool._launch")
            del outs
            m("free outputs")

        for name, val in sections(pool_replica, Marks(), cpm, calls=10).items():
            emit({"what": "section", "op": "pool_pair", "name": name, "host_us": val})

        def paf_replica(m):
            m.start()
            layer = getattr(mod, "prism", None)
            reason = fallback_reason(layer.config, n, n, None, None, 0.0)
            check_qkv(q, k, v)
            scale = d ** -0.5
            o = kernel_ops(layer.backend, q.device)
            m("prologue")
            out_, stats = _attend(q, k, v, layer.config, layer.bands, scale, o, reason, None)
            m("_attend")
            if stats.sparse and layer.stats.check_against_dense:
                pass
            stats.selection = None
            layer.stats.record(0, stats)
            m("stats")
            r = out_.transpose(1, 2)
            del out_, r
            m("transpose+free")

        for name, val in sections(paf_replica, Marks(), cpm).items():
            emit({"what": "section", "op": "prism_attention_forward", "name": name, "host_us": val})

        def attend_replica(m):
            from prism_mm.selection import estimate
            m.start()
            selection = estimate(q, k, cfg, bands, ops)
            m("estimate")
            o = torch.empty(b, n, hq, d, device=dev, dtype=q.dtype).transpose(1, 2)
            m("out alloc")
            ops.block_sparse_attention(q, k, v, selection, d ** -0.5, o)
            m("block_sparse op")
            st = PrismStats.of_selection(selection)
            m("stats")
            del o, st, selection
            m("free")

        for name, val in sections(attend_replica, Marks(), cpm).items():
            emit({"what": "section", "op": "_attend", "name": name, "host_us": val})
        emit({"what": "order", "name": "prism_attention_forward last", "host_us": host_us(paf, cpm, calls=3)})


if __name__ == "__main__":
    main()
