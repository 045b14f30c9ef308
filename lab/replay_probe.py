"""Where the host time of one Prism attention call goes, piece by piece, on the replayed path (GPU held busy behind a
sleep, as lab/host_probe.py measures). Each piece of select_and_attend's replay is timed alone: the key, the three
allocations, the arguments, the descriptor copies (the fallback's), each of the three launches (DirectLaunch, and
through the kernel's launcher), and the record of the call (PrismStats.of_selection: its causal block count); also
one decoding step, Prism's entry against transformers' SDPA entry. One JSON line per piece.

    python lab/replay_probe.py --tokens 33536 --label new > replay.jsonl
"""
from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_probe import attention_inputs, host_us, probe_cli

from prism_mm.attention import prism_attention_forward
from prism_mm.kernels import sparse_call
from prism_mm.kernels.launch import _current_stream
from prism_mm.stats import PrismStats


def main():
    args, cpm, emit = probe_cli()
    for n in args.tokens:
        pieces(n, cpm, emit)


def pieces(n: int, cpm: float, emit) -> None:
    a = attention_inputs(n)
    q, k, v, d = a.q, a.k, a.v, a.d
    ops, spec, index = a.mod.prism.prepared(q)
    sparse_call._replays.clear()
    ops.select_and_attend(q, k, v, spec, index, d ** -0.5)
    (replay,) = sparse_call._replays.values()
    stream = _current_stream(replay.launch_device)
    out, sel = replay(q, k, v, index)
    scratch = torch.empty(replay.scratch_elems, device=q.device, dtype=torch.int32)
    values = {"q": q.data_ptr(), "k": k.data_ptr(), "v": v.data_ptr(), "high_pos": index.high_pos.data_ptr(),
              "low_pos": index.low_pos.data_ptr(), "out": out.data_ptr(),
              "buffer": scratch.data_ptr() + 4 * replay.buffer_offset, "counts": sel.kv_num_blocks.data_ptr(),
              "indices": scratch.data_ptr()}
    if replay.descriptors is not None:  # for the launches through Triton's launchers
        values["k_desc"] = sparse_call._on(replay.descriptors[0], k)
        values["v_desc"] = sparse_call._on(replay.descriptors[1], v)

    def allocations():
        torch.empty(replay.counts_shape, device=q.device, dtype=torch.int32)
        s = torch.empty(replay.scratch_elems, device=q.device, dtype=torch.int32)
        torch.empty(replay.out_shape, device=q.device, dtype=q.dtype)
        s.as_strided(replay.indices_shape, replay.indices_strides)

    cases = {
        "prism_attention_forward": a.prism_forward,
        "transformers sdpa_attention_forward": a.sdpa_forward,
        "F.sdpa(enable_gqa, causal)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "ops.select_and_attend": lambda: ops.select_and_attend(q, k, v, spec, index, d ** -0.5),
        "sparse_call.select_and_attend": lambda: sparse_call.select_and_attend(q, k, v, spec, index, d ** -0.5),
        "replay(q, k, v, bands)": lambda: replay(q, k, v, index),
        "_key + get": lambda: sparse_call._replays.get(sparse_call._key(q, k, v, spec, index, d ** -0.5)),
        "_hook_installed": sparse_call._hook_installed,
        "3 allocations + as_strided": allocations,
        "torch.empty(counts)": lambda: torch.empty(replay.counts_shape, device=q.device, dtype=torch.int32),
        "9 data_ptr": lambda: [t.data_ptr() for t in (q, k, v, q, k, v, q, k, v)],
        "2 descriptor copies (the fallback's)": lambda: (sparse_call._on(replay.descriptors[0], k), sparse_call._on(replay.descriptors[1], v)),
        "current stream": lambda: _current_stream(replay.launch_device),
        "torch.cuda.current_device": torch.cuda.current_device,
        "PrismStats.of_selection": lambda: PrismStats.of_selection(sel),
    }
    for i, kept in enumerate(replay.launches):
        name = f"launch {i} ({getattr(kept.kernel, 'name', i)}, {type(kept).__name__})"
        cases[name] = lambda kept=kept: kept(stream, values)
    # the same kind of input replayed through Triton's launchers (no DirectLaunch), for an A/B in this run
    sparse_call._replays.clear()
    with mock.patch.object(sparse_call.DirectLaunch, "of", return_value=None):
        ops.select_and_attend(q, k, v, spec, index, d ** -0.5)
    (through,) = sparse_call._replays.values()
    sparse_call._replays.clear()
    sparse_call._replays[sparse_call._key(q, k, v, spec, index, d ** -0.5)] = replay
    cases["replay through Triton's launchers"] = lambda: through(q, k, v, index)
    for i, kept in enumerate(through.launches):
        name = f"launch {i} ({getattr(kept.kernel, 'name', i)}, through Triton's launcher)"
        cases[name] = lambda kept=kept: kept(stream, values)
    q1 = q[:, :, -1:]  # a decoding step over the same keys, after the layer's prefill record (made above)
    a.prism_forward()
    cases["prism_attention_forward, decoding"] = lambda: prism_attention_forward(a.mod, q1, k, v, None, scaling=d ** -0.5)
    cases["transformers sdpa_attention_forward, decoding"] = lambda: sdpa_attention_forward(a.mod, q1, k, v, None,
                                                                                             scaling=d ** -0.5)
    for name, fn in cases.items():
        emit({"what": "piece", "name": name, "tokens": n, "host_us": host_us(fn, cpm, calls=3 if "launch" in name
                                                                              or "attend" in name or "forward" in name
                                                                              or "replay" in name or "sdpa" in name
                                                                              else 20, rounds=25)})


if __name__ == "__main__":
    main()
