"""Host cost of one Prism decoder layer, with the GPU held busy so that no launch waits on a full queue.

Each timed call is enqueued behind a GPU sleep longer than the call's host work, so perf_counter measures the
host alone (a call that synchronises inside shows up as ~the sleep). Prints one JSON line per measurement.
Components (28/4 heads, head_dim 128, transformers' [B, L, H, D] query layout) and whole decoder layers of an
8-layer random-weight Qwen2.5-VL-7B text decoder (forward hooks, median over layers and repeats).

    python lab/host_probe.py --tokens 33536 131328 > host.jsonl
Runs against whichever prism_mm is first on sys.path (so the same script times two commits).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import triton

import prism_mm
from prism_mm import PrismConfig
from prism_mm.kernels import ops as kernel_ops
from prism_mm.selection import estimate

sys.path.append(str(Path(__file__).resolve().parent.parent))  # benchmarks/, after any prism_mm on PYTHONPATH
from benchmarks.video_e2e import attention_call_seconds, layer_host_seconds
from benchmarks.video_e2e import sleep_cycles_per_ms as cycles_per_ms


@triton.jit
def _noop(X):
    pass


def host_us(fn, cpm: float, calls: int = 20, rounds: int = 15, sleep_ms: float = 40.0) -> float:
    """Median over rounds of the host microseconds per call, `calls` calls enqueued behind one GPU sleep."""
    fn()
    torch.cuda.synchronize()
    per = []
    for _ in range(rounds):
        torch.cuda._sleep(int(sleep_ms * cpm))
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        per.append(1e6 * (t1 - t0) / calls)
    return statistics.median(per)


def probe_cli():
    """The launch probes' command line (--tokens, --label), the sleep calibration and a JSON-lines emitter that has
    already written the GPU / versions record: (args, cycles per ms, emit)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[33536])
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    def emit(rec):
        print(json.dumps({"label": args.label, **rec}), flush=True)

    emit({"what": "gpu", "name": torch.cuda.get_device_name(), "torch": torch.__version__,
          "triton": triton.__version__, "prism_mm": prism_mm.__file__})
    return args, cycles_per_ms(), emit


def attention_inputs(n: int) -> SimpleNamespace:
    """One decoder layer's attention call at n tokens (Qwen2.5-VL-7B: 28/4 heads, head_dim 128, bf16, Q in
    transformers' [B, L, H, D] memory), with everything the Prism ops take, a selection and a module set up for
    prism_attention_forward and transformers' sdpa_attention_forward. Shared by the lab's host probes."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from prism_mm.attention import PrismLayer, prism_attention_forward
    from prism_mm.kernels.layout import SelectSpec
    from prism_mm.selection import band_index
    from prism_mm.spectral import RopeLayout
    from prism_mm.stats import PrismRunStats

    dev = torch.device("cuda")
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
    mod.is_causal = True
    mod.num_key_value_groups = hq // hkv
    return SimpleNamespace(dev=dev, b=b, hq=hq, hkv=hkv, d=d, n=n, q=q, k=k, v=v, cfg=cfg, bands=bands, ops=ops,
                           bi=bi, pq=pq, pk=pk, spec=spec, sel=sel, out=out, mod=mod,
                           prism_forward=lambda: prism_attention_forward(mod, q, k, v, None, scaling=d ** -0.5),
                           sdpa_forward=lambda: sdpa_attention_forward(mod, q, k, v, None, scaling=d ** -0.5))


def components(n: int, cpm: float, emit) -> None:
    a = attention_inputs(n)
    dev, b, hq, d, q, k, v, cfg, bands, ops, bi = a.dev, a.b, a.hq, a.d, a.q, a.k, a.v, a.cfg, a.bands, a.ops, a.bi
    pq, pk, spec, sel, out = a.pq, a.pk, a.spec, a.sel, a.out
    x = torch.zeros(1, device=dev)
    cases = {
        "torch x.add_(1)": lambda: x.add_(1),
        "triton empty kernel (1 arg)": lambda: _noop[(1,)](x),
        "torch.empty out": lambda: torch.empty(b, n, hq, d, device=dev, dtype=q.dtype),
        "pool_bands(q)": lambda: ops.pool_bands(q, cfg.block_size, bi),
        "pool_pair(q, k)": lambda: ops.pool_pair(q, k, cfg.block_size, bi),
        "select_blocks": lambda: ops.select_blocks(pq, pk, spec, n, n),
        "selection.density()": lambda: sel.density(),
        "block_sparse_attention": lambda: ops.block_sparse_attention(q, k, v, sel, None, out),
        "estimate()": lambda: estimate(q, k, cfg, bands, ops),
        "prism_attention_forward": a.prism_forward,
        "transformers sdpa_attention_forward": a.sdpa_forward,
        "F.sdpa(enable_gqa, causal)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    }
    if hasattr(ops, "pool_qk"):
        cases["pool_qk(q, k)"] = lambda: ops.pool_qk(q, k, cfg.block_size, bi)
    if hasattr(ops, "select_and_attend"):  # from 2026-12-02: the three launches replayed per kind of input
        cases["select_and_attend"] = lambda: ops.select_and_attend(q, k, v, spec, bi, d ** -0.5)
    for name, fn in cases.items():
        calls = 3 if any(part in name for part in ("sdpa", "prism_attention", "block_sparse", "select_and")) else 20
        emit({"what": "component", "name": name, "tokens": n, "host_us": host_us(fn, cpm, calls=calls)})
    for name in ("estimate()", "block_sparse_attention", "select_and_attend")[:3 if "select_and_attend" in cases else 2]:
        # GPU time, for the record that host savings cost none
        emit({"what": "gpu time", "name": name, "tokens": n,
              "gpu_ms": triton.testing.do_bench(cases[name], warmup=50, rep=300, return_mode="median")})


def layers(n: int, cpm: float, emit, reps: int = 3) -> None:
    """Host time of whole decoder layers per mode, and of the attention call inside each (in situ: the layer's other
    work runs between two attention calls, as in a prefill), with and without the garbage collector."""
    import gc

    from transformers import Qwen2_5_VLForConditionalGeneration

    from prism_mm.models import enable_prism, set_attention, shipped_config

    config = shipped_config("Qwen/Qwen2.5-VL-7B-Instruct")
    config.text_config.num_hidden_layers = 8
    config.vision_config.depth = 1
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, torch_dtype=torch.bfloat16).eval()
    enable_prism(model, PrismConfig.video(min_sparse_len=0))
    lm = model.model.language_model
    embeds = torch.randn(1, n, config.text_config.hidden_size, device="cuda", dtype=torch.bfloat16)
    pos = torch.arange(n, device="cuda")[None].expand(3, 1, n)
    for mode, collect in (("sdpa", True), ("prism", True), ("sdpa", False), ("prism", False),
                          ("sdpa", True), ("prism", True)):
        set_attention(model, "dense" if mode == "sdpa" else "prism")

        def forward():
            with torch.no_grad():
                lm(inputs_embeds=embeds, position_ids=pos, use_cache=False)

        forward()  # warm-up
        (gc.enable if collect else gc.disable)()
        timed_layers = []
        with attention_call_seconds() as attention_times:  # each attention call timed where the model makes it
            for _ in range(reps):
                attention_times.clear()
                per_layer = layer_host_seconds(lm.layers, forward, "cuda")
                assert len(per_layer) == len(attention_times), "one attention call per decoder layer"
                timed_layers += [(t, synced, a) for (t, synced), a in zip(per_layer, attention_times)]
        gc.enable()
        ahead = [(t, a) for t, synced, a in timed_layers if not synced]
        woken = [t for t, synced, _ in timed_layers if synced]
        emit({"what": "decoder layer", "mode": mode, "gc": collect, "tokens": n,
              "host_us_median": 1e6 * statistics.median(t for t, _ in ahead),
              "attention_us_median": 1e6 * statistics.median(a for _, a in ahead),
              "rest_us_median": 1e6 * statistics.median(t - a for t, a in ahead),
              "host_us_min": 1e6 * min(t for t, _ in ahead), "samples": len(ahead),
              "after_sync_us_median": 1e6 * statistics.median(woken), "after_sync_samples": len(woken)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[33536, 131328])
    ap.add_argument("--label", default="")
    ap.add_argument("--profile", action="store_true", help="cProfile the ops instead")
    ap.add_argument("--components-only", action="store_true", help="skip the decoder-layer timings")
    args = ap.parse_args()
    if args.profile:
        return profile()
    cpm = cycles_per_ms()

    def emit(rec):
        print(json.dumps({"label": args.label, "prism_mm": prism_mm.__file__, **rec}), flush=True)

    emit({"what": "gpu", "name": torch.cuda.get_device_name(), "torch": torch.__version__,
          "triton": triton.__version__, "sleep_cycles_per_ms": cpm})
    for n in args.tokens:
        components(n, cpm, emit)
        if not args.components_only:
            layers(n, cpm, emit)




def profile(n: int = 33536, calls: int = 200) -> None:
    """cProfile of the host side of the Prism ops (top functions by own time), GPU kept busy."""
    import cProfile
    import pstats

    a = attention_inputs(n)
    q, k, v, cfg, bands, ops, sel, out = a.q, a.k, a.v, a.cfg, a.bands, a.ops, a.sel, a.out
    cpm = cycles_per_ms()
    cases = (("estimate", lambda: estimate(q, k, cfg, bands, ops), 10, 30),
             ("block_sparse_attention", lambda: ops.block_sparse_attention(q, k, v, sel, None, out), 1, 60),
             ("prism_attention_forward", a.prism_forward, 1, 60))
    for name, fn, per_sleep, sleep_ms in cases:  # each batch of calls enqueued behind a GPU sleep longer than it
        fn()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        for _ in range(calls // per_sleep if per_sleep > 1 else calls // 4):
            torch.cuda._sleep(int(sleep_ms * cpm))
            prof.enable()
            for _ in range(per_sleep):
                fn()
            prof.disable()
            torch.cuda.synchronize()
        print(f"===== {name}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
