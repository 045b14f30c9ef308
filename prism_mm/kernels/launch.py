"""Launching a Triton kernel without Triton's per-call dispatch, once it has been compiled for the arguments' kind.

`kernel[grid](*args, **kwargs)` binds every argument, derives its specialisation (dtype, 16-byte alignment, value 1,
divisibility by 16, integer width), builds a cache key and looks the compiled kernel up, on every call: tens of
microseconds per launch on the host, with three launches per Prism layer. `CachedLaunch` keys the compiled kernel on
a cheaper summary that is at least as fine as Triton's (integers by value, tensors by dtype and alignment: arguments
Triton would compile separately never share an entry) and launches it through the compiled kernel's own launcher,
the call Triton's dispatch ends in. The first call of a kind goes through Triton (compiling, or finding the kernel in
Triton's cache). Arguments it cannot summarise, an installed launch or inspection hook (profilers), a kernel's
pre-run hooks or used globals, a callable grid and the interpreter (TRITON_INTERPRET=1) take Triton's path every time.
"""
from __future__ import annotations

import torch

try:  # triton >= 3.3
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older triton: no cache, every launch through Triton
    _knobs = None
try:
    from triton.tools.tensor_descriptor import TensorDescriptor as _TensorDescriptor
except ImportError:  # pragma: no cover
    _TensorDescriptor = None


def _current_stream(device: int) -> int:
    """The raw handle of the current CUDA stream (what Triton's own launch passes)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream


def _hooked(hook) -> bool:
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return bool(calls) if calls is not None else True


def _hook_installed() -> bool:
    """A launch hook (a profiler's) or Triton's compile-stage inspection hook is set: launches go through Triton, which
    calls them. Triton >= 3.5 keeps the launch hooks in chains that are never None (empty when none is set); earlier
    versions keep one callable or None."""
    runtime = _knobs.runtime
    return (_hooked(runtime.launch_enter_hook) or _hooked(runtime.launch_exit_hook)
            or getattr(runtime, "add_stages_inspection_hook", None) is not None)


def arg_kind(arg):
    """What a kernel argument contributes to the cache key, at least as fine as Triton's specialisation: integers by
    value, tensors by dtype and 16-byte alignment, host tensor descriptors by their base's kind, block, shape,
    strides and padding, floats as one kind. None: a kind not summarised here (the launch goes through Triton)."""
    if type(arg) is int:
        return arg
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.data_ptr() % 16 == 0)
    if isinstance(arg, bool):
        return ("b", arg)
    if isinstance(arg, float):
        return "f"
    if _TensorDescriptor is not None and type(arg) is _TensorDescriptor:
        base = arg.base
        return ("desc", base.dtype, base.data_ptr() % 16 == 0, tuple(arg.block_shape), getattr(arg, "padding", None),
                tuple(arg.shape), tuple(arg.strides))
    return None


MAX_ENTRIES = 4096


class CachedLaunch:
    """`CachedLaunch(jit_fn)[grid](*args, **kwargs)` launches like `jit_fn[grid](*args, **kwargs)`.

    Positional arguments are the kernel's runtime parameters in order; keyword arguments are its constexpr
    parameters (which must follow the runtime ones in the signature) and launch options (num_warps, ...).
    """

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict = {}
        self.hits = 0  # launches that skipped Triton's dispatch (for tests)
        # Only a compiled JITFunction (not the interpreter's stand-in) on a triton with knobs has the parts used here.
        self.enabled = (_knobs is not None and hasattr(fn, "device_caches") and hasattr(fn, "params")
                        and hasattr(fn, "pre_run_hooks"))
        self.n_runtime, self.constexprs = -1, ()
        if self.enabled:
            names = list(fn.arg_names)
            constexprs = [p.name for p in fn.params if p.is_constexpr]
            self.n_runtime = len(names) - len(constexprs)
            if names[self.n_runtime:] != constexprs:
                raise TypeError(f"{fn.__name__}: CachedLaunch needs the constexpr parameters last")
            self.constexprs = tuple(constexprs)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def key(self, args, kwargs):
        """The cache key of a launch with these arguments on the current device, or None where it is not cached
        (a kind not summarised, an unhashable keyword argument, or this launcher disabled)."""
        if not self.enabled or len(args) != self.n_runtime:
            return None
        kinds = tuple([a if type(a) is int else arg_kind(a) for a in args])
        if None in kinds:
            return None
        # Triton's own options that change what it compiles (its debug mode, instrumentation) are part of the key
        knobs = (getattr(_knobs.runtime, "debug", None), getattr(_knobs.compilation, "instrumentation_mode", None))
        return (torch.cuda.current_device(), kinds, tuple(kwargs.items()), knobs)

    def entry(self, args, kwargs):
        """The kept (compiled kernel, constexpr values) of a launch like this one, or None if none is kept (also while
        the kernel has pre-run hooks, which only Triton's dispatch runs)."""
        if not self.enabled or self.fn.pre_run_hooks:
            return None
        key = self.key(args, kwargs)
        try:
            return None if key is None else self.compiled.get(key)
        except TypeError:  # an unhashable keyword argument: not cached
            return None

    def launch(self, grid, args, kwargs):
        if not self.enabled or _hook_installed() or callable(grid) or self.fn.pre_run_hooks:
            return self.fn[grid](*args, **kwargs)
        key = self.key(args, kwargs)
        try:
            found = None if key is None else self.compiled.get(key)
        except TypeError:  # an unhashable keyword argument: not cached
            key = None
        if key is None:
            return self.fn[grid](*args, **kwargs)
        if found is None:
            kernel = self.fn[grid](*args, **kwargs)
            cacheable = not getattr(self.fn, "used_global_vals", None)  # Triton re-checks globals on every launch
            if (cacheable and kernel is not None and hasattr(kernel, "run")
                    and all(name in kwargs for name in self.constexprs)):
                if len(self.compiled) >= MAX_ENTRIES:  # integers key by value: bound the entries many lengths leave
                    self.compiled.clear()
                self.compiled[key] = (kernel, tuple(kwargs[name] for name in self.constexprs))
            return kernel
        kernel, constants = found
        run_compiled(kernel, grid, key[0], args, constants)
        self.hits += 1
        return kernel


def run_compiled(kernel, grid, device: int, args, constants) -> None:
    """Launch a compiled Triton kernel through its own launcher on `device`'s current stream, as Triton's dispatch
    ends up doing (no launch metadata, no hooks: callers check _hook_installed first)."""
    run_on_stream(kernel, (*grid, 1, 1)[:3], _current_stream(device), args, constants)


def run_on_stream(kernel, grid: tuple[int, int, int], stream: int, args, constants) -> None:
    """run_compiled with the grid already three-dimensional and the stream resolved (for callers that launch several
    kernels per call and keep their grids)."""
    kernel.run(*grid, stream, kernel.function, kernel.packed_metadata, None, None, None, *args, *constants)


class DirectLaunch:
    """One compiled launch made straight through the C function below Triton 3.6's CudaLauncher, with the argument
    list built once: `CudaLauncher.__call__` (scratch checks) and, for kernels with host TMA descriptors, Triton's
    Python wrapper `inner` (a loop over every argument that expands each descriptor into its CUtensorMap, shape and
    strides) are skipped. Per call: the stream, the tensors' device addresses and, per descriptor, one
    `fill_tma_descriptor` on its new base with the geometry the first call's descriptor had.

    `DirectLaunch.of(...)` returns None where the launcher is not of that form (another Triton, a kernel that needs
    global or profile scratch, a descriptor Triton lowered without TMA or with padded fp4); callers then launch
    through `run_on_stream`."""

    __slots__ = ("descriptor_slots", "fill", "kernel", "launch", "slots", "template")

    @classmethod
    def of(cls, kernel, grid: tuple[int, int, int], args, constants, roles, descriptors: dict):
        """args: the positional arguments, their per-call entries given as roles (`roles[position]`); descriptors:
        position -> (role of the base tensor, the first call's TensorDescriptor), which take precedence over roles."""
        run = kernel.run
        call = vars(type(run)).get("__call__")
        if (type(run).__name__ != "CudaLauncher" or getattr(call, "__code__", None) is None
                or call.__code__.co_argcount != 6  # 3.6: (self, gridX, gridY, gridZ, stream, function, *args)
                or getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1)
                or not hasattr(run, "launch_cooperative_grid") or not hasattr(run, "launch_pdl")):
            return None
        launch, meta = run.launch, {}
        code = getattr(launch, "__code__", None)
        if code is not None:  # Triton's descriptor wrapper around the C function
            if sorted(code.co_freevars) != ["launcher", "tensordesc_indices", "tensordesc_meta"]:
                return None
            cells = {name: cell.cell_contents for name, cell in zip(code.co_freevars, launch.__closure__)}
            positions, metas = sorted(cells["tensordesc_indices"]), cells["tensordesc_meta"]
            if positions != sorted(descriptors) or len(metas) != len(positions) or any(m is None for m in metas):
                return None
            meta, launch = dict(zip(positions, metas)), cells["launcher"]
        elif descriptors:
            return None
        try:
            from triton.backends.nvidia import driver as nvidia
            from triton.runtime import driver
        except ImportError:
            return None
        if getattr(nvidia, "_BASE_ARGS_FORMAT", None) != "iiiKKppOOOOOO":  # the 13 leading arguments built below
            return None
        fill = getattr(driver.active.utils, "fill_tma_descriptor", None)
        to_host = getattr(nvidia, "TMA_DTYPE_DEVICE_TO_HOST", None)
        if descriptors and (fill is None or to_host is None):
            return None

        self = cls()
        self.kernel = kernel  # kept alive with its function handle
        self.launch, self.fill = launch, fill
        # what Triton 3.6's launcher passes before the kernel's arguments: grid (3), stream, function, cooperative,
        # pdl, global and profile scratch, the packed metadata, launch metadata and the two launch hooks
        self.template = [*grid, None, kernel.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                         kernel.packed_metadata, None, None, None]
        self.slots, self.descriptor_slots = [], []
        for i, arg in enumerate([*args, *constants]):
            if i in descriptors:
                role, desc = descriptors[i]
                m = meta[i]
                if m.get("fp4_padded") or list(desc.strides)[-1] != 1:
                    return None
                shape, strides = [int(s) for s in desc.shape], [int(s) for s in desc.strides]
                geometry = (m["swizzle"], m["elem_size"], to_host[m["elem_type"]], m["block_size"],
                            shape, strides, 1 if desc.padding == "nan" else 0)
                self.descriptor_slots.append((len(self.template), role, geometry))
                self.template += [None, *shape, *strides]
            else:
                if i in roles:
                    self.slots.append((len(self.template), roles[i]))
                self.template.append(None if i in roles else arg)
        return self

    def __call__(self, stream: int, values: dict) -> None:
        args = self.template.copy()
        args[3] = stream
        for i, role in self.slots:
            args[i] = values[role]
        for i, role, geometry in self.descriptor_slots:
            args[i] = self.fill(values[role], *geometry)
        self.launch(*args)
