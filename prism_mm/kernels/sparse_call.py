"""Prism's sparse path on the GPU in one host call: pool Q and K, select key blocks, attend (three launches).

select_and_attend(q, k, v, spec, bands, scale) -> (out, selection) is pool_pair, select_blocks and
block_sparse_attention in a row, with out in transformers' layout [B, Lq, Hq, D] (contiguous). Called op by op, each
launch checks its inputs, derives its arguments and keys its compiled kernel again, and in a prefill every layer repeats
that work for inputs of one kind. So the first call of a kind (shapes, strides, dtypes, device, 16-byte alignment of
q, k and v, the SelectSpec, the band dims, the scale, Triton's debug options) runs the three ops and keeps a `Replay`:
each launch's compiled kernel, grid and arguments, with the per-call tensors marked by role. A later call of that kind
makes three allocations (the output, the selection's counts, one scratch for its indices and the pooled bands) and
launches the three compiled kernels, the tensors passed as device addresses: where the launcher has Triton 3.6's
form, straight through the C launch function below it (launch.DirectLaunch: the argument lists built once, K's and
V's TMA descriptors encoded from their addresses), else through the launcher, with K's and V's kept descriptors
copied onto this call's K and V. The outputs are fresh allocations, 16-byte aligned like the first
call's (the CUDA caching allocator's blocks are 512-byte aligned, the scratch's parts too), so they specialise the
kernels as the first call's did.
Where a launch is not kept (the interpreter, a kernel CachedLaunch does not cache) every call takes the ops' path, as
does every call while a profiler's launch hook is installed. Twin: torch_ops.select_and_attend.
"""
from __future__ import annotations

import math

import torch

from . import block_sparse, estimate, pool
from .launch import (
    DirectLaunch,
    _current_stream,
    _hook_installed,
    _knobs,
    run_on_stream,
)
from .layout import BandIndex, BlockSelection, SelectSpec

MAX_REPLAYS = 256
_replays: dict = {}
_BASE_OF = {"k_desc": "k", "v_desc": "v"}  # a descriptor's role -> its base tensor's role


class _Launch:
    """One kept launch: the compiled kernel and its constexpr values, the grid (three-dimensional), and the positional
    arguments with the per-call tensors left as roles (`slots`: (position, role))."""

    __slots__ = ("kernel", "constants", "grid", "template", "slots")

    def __init__(self, entry, grid, args, roles: dict):
        self.kernel, constants = entry
        self.constants = tuple(constants)
        self.grid = (*grid, 1, 1)[:3]
        self.template = list(args)
        self.slots = []
        for i, arg in enumerate(args):
            role = roles.get(id(arg))
            if role is not None:
                self.slots.append((i, role))
                self.template[i] = None
            elif not isinstance(arg, (int, float)):
                raise TypeError(f"argument {i} ({type(arg).__name__}) has no role")  # an object only this call has

    def __call__(self, stream: int, values: dict) -> None:
        args = self.template.copy()
        for i, role in self.slots:
            args[i] = values[role]
        run_on_stream(self.kernel, self.grid, stream, args, self.constants)



class Replay:
    """The three launches of one kind of input, and the outputs' shapes; `hits` counts the calls it served.

    A call makes three allocations: the output, the selection's counts and one int32 scratch that holds the
    selection's indices and, 512-byte aligned after them, the pooled buffer (which the selection kernel alone reads).
    Tensors reach the launchers as device addresses (ints), which Triton's launcher takes as they are; the kind of
    input, and so the 16-byte alignment the kernels were compiled for, is the first call's. The launches go to the
    current stream of `launch_device`, the device that was current when the first call launched (part of the key).
    A kept selection's indices hold the scratch, so the pooled buffer too (Qwen2.5-VL-7B shapes: 5.5 MB beside the
    indices' 7.7 MB at 33K tokens, 21 MB beside 118 MB at 128K); only kept selections (keep_selections) pay it."""

    def __init__(self, launches, device: torch.device, launch_device: int, buffer_elems: int, counts_shape,
                 indices_shape, out_shape, descriptors, device_descriptors: bool, block_size: int, q_len: int,
                 kv_len: int):
        self.launches = launches
        self.device, self.launch_device = device, launch_device
        self.counts_shape, self.indices_shape, self.out_shape = counts_shape, indices_shape, out_shape
        self.indices_strides = tuple(math.prod(indices_shape[i + 1:]) for i in range(len(indices_shape)))
        self.buffer_offset = -(-math.prod(indices_shape) // 128) * 128  # int32 elements: 512 bytes
        self.scratch_elems = self.buffer_offset + buffer_elems  # the pooled buffer is fp32: 4 bytes, as int32
        # K's and V's host TMA descriptors (the first call's, checked by Triton when made) as templates: where the
        # sparse launch is a _Launch, each call copies them (no checks re-run) with its own K / V as the base; the
        # templates hold no tensor
        self.descriptors = descriptors
        # a DirectLaunch encodes its descriptors from K's / V's addresses; only a _Launch that takes them needs copies
        self.copies_descriptors = any(isinstance(x, _Launch) and any(role in _BASE_OF for _, role in x.slots)
                                      for x in launches)
        if descriptors is not None:
            for desc in descriptors:
                desc.base = None
        self.device_descriptors = device_descriptors  # DESC 1: Triton's allocator must be set where the launch runs
        self.block_size, self.q_len, self.kv_len = block_size, q_len, kv_len
        self.hits = 0

    def __call__(self, q, k, v, bands: BandIndex):
        device = self.device
        counts = torch.empty(self.counts_shape, device=device, dtype=torch.int32)
        scratch = torch.empty(self.scratch_elems, device=device, dtype=torch.int32)
        out = torch.empty(self.out_shape, device=device, dtype=q.dtype)
        indices = scratch.as_strided(self.indices_shape, self.indices_strides)
        at = scratch.data_ptr()
        values = {"q": q.data_ptr(), "k": k.data_ptr(), "v": v.data_ptr(), "high_pos": bands.high_pos.data_ptr(),
                  "low_pos": bands.low_pos.data_ptr(), "out": out.data_ptr(), "buffer": at + 4 * self.buffer_offset,
                  "counts": counts.data_ptr(), "indices": at}
        if self.copies_descriptors:
            values["k_desc"], values["v_desc"] = _on(self.descriptors[0], k), _on(self.descriptors[1], v)
        elif self.device_descriptors:
            block_sparse._ensure_tma_allocator()
        stream = _current_stream(self.launch_device)
        for kept in self.launches:
            kept(stream, values)
        self.hits += 1
        return out, BlockSelection(counts, indices, self.block_size, self.q_len, self.kv_len)


def _copyable(desc) -> bool:
    """True if _on can copy `desc` by its fields: a plain instance dict holding its base (Triton 3.6 to 3.8's
    TensorDescriptor dataclass). A descriptor type without one (slots, say) is not kept: those calls take the ops'
    path."""
    fields = getattr(desc, "__dict__", None)
    return isinstance(fields, dict) and "base" in fields


def _on(template, base):
    """A copy of a kept descriptor with `base` (its checks are not re-run: the kind of input is the template's)."""
    desc = object.__new__(type(template))
    desc.__dict__ = {**template.__dict__, "base": base}
    return desc


def _key(q, k, v, spec: SelectSpec, bands: BandIndex, scale: float):
    knobs = (getattr(_knobs.runtime, "debug", None), getattr(_knobs.compilation, "instrumentation_mode", None))
    return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype, q.device,
            torch.cuda.current_device(), q.data_ptr() % 16 == 0, k.data_ptr() % 16 == 0, v.data_ptr() % 16 == 0, spec,
            bands.high_idx.numel(), bands.low_idx.numel(), bands.high_pos.numel(), scale, knobs)


def _through_ops(q, k, v, spec: SelectSpec, bands: BandIndex, scale: float, keep: bool):
    """The three launches as the ops make them; with `keep`, also the Replay of this kind of input (or None where a
    launch is not kept)."""
    b, hq, q_len, d = q.shape
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if len({id(q), id(k), id(v)}) < 3:  # one tensor in two roles: its launches cannot be told apart by object
        keep = False
    (pq, pk), pool_grid, pool_args, pool_kwargs = pool.launch_args([q, k], spec.block_size, bands)
    pool.pool_launch[pool_grid](*pool_args, **pool_kwargs)
    selection, select_grid, select_args, select_kwargs = estimate.launch_args(pq, pk, spec, q_len, k.shape[2])
    estimate.select_launch[select_grid](*select_args, **select_kwargs)
    out = torch.empty(b, q_len, hq, d, device=q.device, dtype=q.dtype)
    _, sparse_grid, sparse_args, sparse_kwargs = block_sparse.launch_args(q, k, v, selection, scale, out.transpose(1, 2))
    block_sparse.sparse_launch[sparse_grid](*sparse_args, **sparse_kwargs)
    if not keep:
        return out, selection, None
    launched = ((pool.pool_launch, pool_grid, pool_args, pool_kwargs),
                (estimate.select_launch, select_grid, select_args, select_kwargs),
                (block_sparse.sparse_launch, sparse_grid, sparse_args, sparse_kwargs))
    k_desc, v_desc = sparse_args[1], sparse_args[2]
    descriptors = None
    if k_desc is not k:  # host TMA descriptors (their base is set per call)
        if not (_copyable(k_desc) and _copyable(v_desc)):
            return out, selection, None
        descriptors = (k_desc, v_desc)
    roles = {id(q): "q", id(k): "k", id(v): "v", id(bands.high_pos): "high_pos", id(bands.low_pos): "low_pos",
             id(pq.buffer): "buffer", id(selection.kv_num_blocks): "counts", id(selection.kv_indices): "indices",
             id(sparse_args[3]): "out", id(k_desc): "k_desc" if descriptors else "k",
             id(v_desc): "v_desc" if descriptors else "v"}
    launches = []
    for launcher, grid, args, kwargs in launched:
        entry = launcher.entry(args, kwargs)
        if entry is None:
            return out, selection, None
        try:
            kept = _Launch(entry, grid, args, roles)
        except TypeError:  # an argument object this call alone has: not recorded
            return out, selection, None
        kept_descriptors = {i: (_BASE_OF[role], args[i]) for i, role in kept.slots if role in _BASE_OF}
        direct = DirectLaunch.of(kept.kernel, kept.grid, args, kept.constants, dict(kept.slots), kept_descriptors)
        launches.append(direct or kept)
    replay = Replay(launches, q.device, torch.cuda.current_device(), pq.buffer.numel(), tuple(selection.kv_num_blocks.shape),
                    tuple(selection.kv_indices.shape), tuple(out.shape), descriptors, sparse_kwargs["DESC"] == 1,
                    spec.block_size, q_len, k.shape[2])
    return out, selection, replay


def select_and_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: SelectSpec, bands: BandIndex,
                      scale: float) -> tuple[torch.Tensor, BlockSelection]:
    """Prism's sparse attention of q [B, Hq, Lq, D] over k/v [B, Hkv, Lk, D]: the block selection of `spec` over the
    pooled bands, then causal block-sparse attention with `scale`. Returns (out [B, Lq, Hq, D], the selection)."""
    if _knobs is None or not getattr(pool.pool_launch, "enabled", False):  # interpreter or old Triton: op by op
        out, selection, _ = _through_ops(q, k, v, spec, bands, scale, keep=False)
        return out, selection
    key = _key(q, k, v, spec, bands, scale)
    replay = _replays.get(key)
    if replay is not None and not _hook_installed():
        return replay(q, k, v, bands)
    out, selection, made = _through_ops(q, k, v, spec, bands, scale, keep=replay is None)
    if made is not None:
        if len(_replays) >= MAX_REPLAYS:
            _replays.clear()
        _replays[key] = made
    return out, selection
