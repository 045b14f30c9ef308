"""prism_attention: end-to-end paths, statistics, and clear errors for bad input."""
import pytest
import torch
from conftest import DEVICE, rel_err
from generators import dense_causal_attention
from torch.utils._python_dispatch import TorchDispatchMode

from prism_mm import PrismConfig, RopeSpec, dense_attention, estimate, prism_attention
from prism_mm.kernels import torch_ops


class Ops(TorchDispatchMode):
    """Records the names of the torch ops run inside it (what a host path asks of torch, op by op)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def qkv(b=1, hq=4, hkv=2, q_len=200, kv_len=200, d=64, dtype=torch.float32):
    return (
        torch.randn(b, hq, q_len, d, device=DEVICE, dtype=dtype),
        torch.randn(b, hkv, kv_len, d, device=DEVICE, dtype=dtype),
        torch.randn(b, hkv, kv_len, d, device=DEVICE, dtype=dtype),
    )


@pytest.mark.parametrize("q_len,kv_len", [(200, 200), (90, 250)])
def test_backends_agree_and_match_reference_on_their_selection(q_len, kv_len):
    q, k, v = qkv(q_len=q_len, kv_len=kv_len)
    q = q * 3  # peakier scores -> a real sparse selection
    cfg = PrismConfig(block_size=32, threshold_high=0.7, threshold_low=0.7, min_sparse_len=0, max_density=1.0)
    out_t, stats_t = prism_attention(q, k, v, cfg, backend="torch", return_stats=True)
    out_k, stats_k = prism_attention(q, k, v, cfg, backend="triton", return_stats=True)
    assert stats_t.sparse and stats_k.sparse
    assert stats_t.density.shape == (1, 4) and (stats_t.density > 0).all() and (stats_t.density <= 1).all()
    sel = stats_k.selection
    expected = torch_ops.block_sparse_attention(q, k, v, sel)
    assert rel_err(out_k, expected) < 2e-3
    # Same selection up to boundary flips -> nearly the same output.
    assert (stats_t.selection.to_mask() != sel.to_mask()).float().mean() < 0.01
    assert rel_err(out_t, out_k) < 5e-2


def test_threshold_one_is_dense():
    q, k, v = qkv(q_len=160, kv_len=160, hq=7, hkv=1)
    cfg = PrismConfig(block_size=32, threshold_high=1.0, threshold_low=1.0, min_sparse_len=0, max_density=1.0)
    out, stats = prism_attention(q, k, v, cfg, backend="triton", return_stats=True)
    assert torch.allclose(stats.density, torch.ones_like(stats.density))
    assert rel_err(out, dense_attention(q, k, v)) < 2e-3


@pytest.mark.parametrize("method", ["prism", "cutoff"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dense_tail_makes_the_last_query_tokens_exact(method, backend):
    """PrismConfig.dense_tail reaches the attention: with a sparse selection, the last dense_tail query tokens (a
    chunk of 200 queries after 130 cached keys: the tail's 40 queries span two blocks) get dense attention's output,
    the earlier ones do not (they stay sparse)."""
    q, k, v = qkv(q_len=200, kv_len=330, hq=4, hkv=2)
    q = q * 3
    cfg = PrismConfig(block_size=32, threshold_high=0.5, threshold_low=0.5, min_sparse_len=0, method=method,
                      cutoff=0.2, dense_tail=40)
    out, stats = prism_attention(q, k, v, cfg, backend=backend, return_stats=True)
    dense = dense_causal_attention(q, k, v)
    assert stats.sparse and (stats.density < 0.95).all()
    assert rel_err(out[:, :, -40:], dense[:, :, -40:]) < 2e-3
    # the rows before the tail's first block (query position q_len - 40 = 160 lies in block 5) stay sparse
    assert rel_err(out[:, :, :160], dense[:, :, :160]) > 1e-2


def test_short_inputs_fall_back_to_dense():
    q, k, v = qkv(q_len=1, kv_len=300)  # a decoding step
    out, stats = prism_attention(q, k, v, PrismConfig(min_sparse_len=0), return_stats=True)
    assert not stats.sparse and stats.selection is None
    assert rel_err(out, dense_causal_attention(q, k, v)) < 1e-5
    q, k, v = qkv(q_len=100, kv_len=100)
    out = prism_attention(q, k, v, PrismConfig(min_sparse_len=4096))
    assert rel_err(out, dense_causal_attention(q, k, v)) < 1e-5


def test_a_decoding_step_after_the_prefill_is_dense_sdpa_and_nothing_else():
    """prism_attention_forward on one query token of a layer whose prefill is recorded: the output is dense attention's,
    the torch ops are exactly dense_attention's (no stats tensors, no launch of Prism's) and the prefill's record
    stays. The very first call of a layer with one token still records it."""
    from prism_mm.attention import PrismLayer, prism_attention_forward
    from prism_mm.stats import PrismRunStats

    q, k, v = qkv(q_len=1, kv_len=300)
    cfg = PrismConfig(block_size=32, min_sparse_len=0)

    class Attention(torch.nn.Module):
        layer_idx = 3

    module = Attention()
    module.prism = PrismLayer(cfg, RopeSpec(head_dim=q.shape[-1]).bands(*cfg.band_dims(q.shape[-1])), PrismRunStats(),
                              backend="torch")
    prism_attention_forward(module, q, k, v, None)  # no prefill recorded yet: this one records
    first = module.prism.stats.layers[3]
    assert first.q_len == 1 and not first.sparse and first.reason == "decoding"
    q2 = torch.randn_like(q)
    with Ops() as decode:
        out, weights = prism_attention_forward(module, q2, k, v, None)
    with Ops() as plain:
        ref = dense_attention(q2, k, v, q.shape[-1] ** -0.5)
    assert decode.names == plain.names + ["aten.transpose.int"], (decode.names, plain.names)
    assert weights is None and out.shape == (1, 1, q.shape[1], q.shape[-1])
    assert rel_err(out.transpose(1, 2), ref) < 1e-6 and rel_err(out.transpose(1, 2), dense_causal_attention(q2, k, v)) < 1e-5
    assert module.prism.stats.layers[3] is first


class ReversedRope(RopeSpec):
    """A rotary embedding whose pair frequencies rise with the pair index (no real model has this): its bands are the
    opposite ends of plain RoPE's, so any code path that ignored `rope` would select differently."""

    def pair_frequencies(self):
        return super().pair_frequencies().flip(0)


def test_rope_spec_drives_the_bands():
    """prism_attention(rope=...) scores the bands that its frequencies give, not plain RoPE's."""
    q, k, v = qkv(d=128, q_len=256, kv_len=256)
    cfg = PrismConfig(block_size=32, min_sparse_len=0, max_density=1.0).with_threshold(0.6)
    rope, plain = ReversedRope(head_dim=128), RopeSpec(head_dim=128)
    dims = cfg.band_dims(128)
    assert set(rope.bands(*dims).high).isdisjoint(plain.bands(*dims).high)
    _, stats = prism_attention(q, k, v, cfg, rope=rope, backend="torch", return_stats=True)
    own = estimate(q, k, cfg, rope.bands(*dims), backend="torch")
    other = estimate(q, k, cfg, plain.bands(*dims), backend="torch")
    assert torch.equal(stats.selection.to_mask(), own.to_mask())
    assert not torch.equal(own.to_mask(), other.to_mask())
    with pytest.raises(ValueError, match="head_dim"):
        prism_attention(q, k, v, cfg, rope=RopeSpec(head_dim=64))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: (torch.randn(4, 100, 64), torch.randn(1, 4, 100, 64), torch.randn(1, 4, 100, 64)), "4-D"),
        (lambda: (torch.randn(1, 4, 100, 64), torch.randn(1, 4, 100, 64).half(), torch.randn(1, 4, 100, 64)), "dtype"),
        (lambda: tuple(torch.randn(1, 4, 100, 64, dtype=torch.float64) for _ in range(3)), "not supported"),
        (lambda: tuple(torch.randn(1, 4, 100, 72) for _ in range(3)), "head_dim 72"),
        (lambda: (torch.randn(1, 6, 100, 64), torch.randn(1, 4, 100, 64), torch.randn(1, 4, 100, 64)), "multiple"),
        (lambda: (torch.randn(1, 4, 120, 64), torch.randn(1, 4, 100, 64), torch.randn(1, 4, 100, 64)), "exceeds kv_len"),
        (lambda: (torch.randn(1, 4, 100, 64), torch.randn(1, 4, 100, 64), torch.randn(1, 4, 90, 64)), "same shape"),
        (lambda: (torch.randn(2, 4, 100, 64), torch.randn(1, 4, 100, 64), torch.randn(1, 4, 100, 64)), "batch"),
        (lambda: (torch.randn(1, 4, 100, 64), torch.randn(1, 0, 100, 64), torch.randn(1, 0, 100, 64)), "multiple"),
        (lambda: (torch.randn(1, 4, 100, 64).numpy(), torch.randn(1, 4, 100, 64), torch.randn(1, 4, 100, 64)), "4-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        prism_attention(*make(), PrismConfig(min_sparse_len=0))


def test_a_layer_keeps_its_recipe_until_its_config_changes():
    """PrismLayer.prepared resolves the ops, SelectSpec and band index once and hands the same back while config,
    bands and backend are the same objects; a newly assigned config (as benchmarks assign per row) is used at once."""
    from dataclasses import replace

    from prism_mm.attention import PrismLayer
    from prism_mm.stats import PrismRunStats

    q, _, _ = qkv(d=64)
    cfg = PrismConfig(block_size=32, min_sparse_len=0).with_threshold(0.8)
    layer = PrismLayer(cfg, RopeSpec(head_dim=64).bands(*cfg.band_dims(64)), PrismRunStats(), backend="torch")
    ops, spec, index = first = layer.prepared(q)
    assert layer.prepared(q) is first and ops.name == "torch"
    assert (spec.threshold_high, spec.block_size, spec.head_dim, index.head_dim) == (0.8, 32, 64, 64)
    layer.config = replace(cfg, threshold_high=0.5)
    _, spec, _ = layer.prepared(q)
    assert spec.threshold_high == 0.5 and layer.prepared(q)[1] is spec
    layer.config = replace(cfg, block_size=64)
    wide = layer.prepared(q)
    assert (wide[1].block_size, wide[1].threshold_high) == (64, 0.8)
    layer.config = replace(layer.config)  # equal but another object: resolved again, to the same recipe
    again = layer.prepared(q)
    assert again is not wide and again[1] == wide[1] and layer.prepared(q) is again
    layer.backend = "triton"  # the interpreter runs Triton on the CPU here (TRITON_INTERPRET=1)
    assert layer.prepared(q)[0].name == "triton"
    q_wide, _, _ = qkv(d=128)
    layer.bands = RopeSpec(head_dim=128).bands(*cfg.band_dims(128))
    assert layer.prepared(q_wide)[1].head_dim == 128 and layer.prepared(q_wide)[2].head_dim == 128


def test_a_layer_pickles_and_copies_after_resolving_its_ops():
    """PrismLayer drops what prepared() kept (the Triton ops are process-local wrappers) when pickled or copied: the
    model can be saved after a prefill, and the copy resolves its ops again."""
    import copy
    import pickle

    from prism_mm.attention import PrismLayer
    from prism_mm.stats import PrismRunStats

    q, _, _ = qkv(d=64)
    cfg = PrismConfig(block_size=32, min_sparse_len=0)
    layer = PrismLayer(cfg, RopeSpec(head_dim=64).bands(*cfg.band_dims(64)), PrismRunStats(), backend="triton")
    ops, spec, _ = layer.prepared(q)
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer), copy.copy(layer)):
        assert other._kept is None and other.config == cfg and other.backend == "triton"
        got_ops, got_spec, _ = other.prepared(q)
        assert got_ops is ops and got_spec == spec  # the process's one ops set; the same recipe
    assert layer._kept is not None and layer == pickle.loads(pickle.dumps(layer))


def test_bad_backend_and_device_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend"):
        prism_attention(q, k, v, PrismConfig(min_sparse_len=0), backend="cuda-magic")
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match="one device"):
            prism_attention(q, k.cpu(), v.cpu())


def test_dense_selection_falls_back_to_dense_sdpa():
    q, k, v = qkv(q_len=160, kv_len=160)
    cfg = PrismConfig(block_size=32, min_sparse_len=0, max_density=0.5).with_threshold(1.0)
    out, stats = prism_attention(q, k, v, cfg, backend="torch", return_stats=True)
    assert not stats.sparse and "max_density" in stats.reason and stats.selection is not None
    assert rel_err(out, dense_causal_attention(q, k, v)) < 1e-5
    with pytest.raises(ValueError, match="max_density"):
        PrismConfig(max_density=0.0)


def test_every_configurable_method_has_an_estimator():
    """PrismConfig.method is read by estimate(): each accepted value has a selection method behind it."""
    from prism_mm.config import SELECTION_METHODS
    from prism_mm.selection import METHODS

    assert set(METHODS) == set(SELECTION_METHODS)
    with pytest.raises(ValueError, match="method"):
        PrismConfig(method="oracle")


def test_model_helpers_are_listed_by_dir_and_help():
    """The lazily imported model helpers show up where users look for the API."""
    import pydoc

    import prism_mm

    for name in ("load_model", "enable_prism", "set_attention"):
        assert name in dir(prism_mm) and name in prism_mm.__all__
    text = pydoc.render_doc(prism_mm, renderer=pydoc.plaintext)
    assert "load_model(" in text and "enable_prism(" in text


def test_fallback_to_dense_is_announced_once_per_reason(monkeypatch):
    """A silent dense fallback would hide that Prism never ran: the first one per reason warns, naming the knob."""
    import warnings

    from prism_mm import attention

    monkeypatch.setattr(attention, "_warned", set())
    q, k, v = qkv(q_len=300, kv_len=300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # e.g. three decoder layers
            prism_attention(q, k, v, PrismConfig(min_sparse_len=4096))
        prism_attention(q[:, :, -1:], k, v, PrismConfig(min_sparse_len=0))  # decoding: expected, silent
        dense_cfg = PrismConfig(block_size=32, min_sparse_len=0, max_density=0.5).with_threshold(1.0)
        prism_attention(q, k, v, dense_cfg, backend="torch")
    messages = [str(w.message) for w in caught if issubclass(w.category, attention.PrismFallbackWarning)]
    assert len(messages) == 2, messages
    assert "min_sparse_len" in messages[0] and "300 query tokens" in messages[0]
    assert "max_density" in messages[1]


def test_min_sparse_len_counts_keys_so_chunks_of_a_long_prompt_run_sparse():
    """A 100-query chunk over 300 keys runs sparse with min_sparse_len 200 (the prompt is long); over 150 keys it
    runs dense, naming the knob."""
    cfg = PrismConfig(block_size=32, min_sparse_len=200, max_density=1.0).with_threshold(0.9)
    q, k, v = qkv(q_len=100, kv_len=300)
    _, stats = prism_attention(q, k, v, cfg, backend="torch", return_stats=True)
    assert stats.sparse and (stats.q_len, stats.kv_len) == (100, 300)
    q, k, v = qkv(q_len=100, kv_len=150)
    out, stats = prism_attention(q, k, v, cfg, backend="torch", return_stats=True)
    assert not stats.sparse and stats.reason == "shorter than min_sparse_len"
    assert rel_err(out, dense_attention(q, k, v)) < 1e-5


def test_mask_function_skips_unpadded_causal_masks_only():
    """prism's mask function builds no [q, kv] mask for an unpadded causal chunk (q < kv), but gives SDPA's mask
    when the batch is padded."""
    from prism_mm.attention import prism_mask_function

    mask = prism_mask_function()
    kwargs = dict(batch_size=1, q_length=4, kv_length=10, q_offset=6, kv_offset=0)
    import inspect

    from transformers.masking_utils import sdpa_mask

    if "q_length" not in inspect.signature(sdpa_mask).parameters:  # older transformers: cache_position instead
        kwargs = dict(batch_size=1, cache_position=torch.arange(6, 10), kv_length=10, kv_offset=0)
    assert mask(**kwargs) is None
    assert mask(**kwargs, attention_mask=torch.ones(1, 10, dtype=torch.bool)) is None
    padded = torch.ones(1, 10, dtype=torch.bool)
    padded[0, :2] = False
    built = mask(**kwargs, attention_mask=padded)
    assert built is not None and built.shape[-2:] == (4, 10) and not built[..., :2].any() and built[0, 0, -1, 2:].all()


def test_sparse_stats_count_their_density_when_first_read():
    """A sparse call's PrismStats holds the selection's per-row counts and computes the density only when read (no
    device work per layer while recording): equal to the selection's own density, kept after the first read, and
    still there once the selection itself is dropped."""
    from generators import random_selection

    from prism_mm.stats import PrismStats

    sel = random_selection(2, 3, 150, 230, 16, 0.4, DEVICE, torch.Generator(device=DEVICE).manual_seed(3))
    stats = PrismStats.of_selection(sel)
    assert stats.sparse and (stats.q_len, stats.kv_len, stats.causal_blocks) == (150, 230, sel.causal_blocks())
    assert stats.known_density is None
    stats.selection = None
    density = stats.density
    assert torch.equal(density, sel.density()) and 0.4 < float(density.mean()) < 0.9
    assert stats.density is density  # computed once
    dense = PrismStats.ran_dense(torch.ones(2, 3), 150, 230, "decoding", sel.causal_blocks())
    assert not dense.sparse and torch.equal(dense.density, torch.ones(2, 3)) and dense.reason == "decoding"


def test_ops_are_resolved_once_per_backend_and_device():
    """kernels.ops caches the resolved op set per (backend, device); a bad backend is refused every time."""
    from prism_mm.kernels import ops

    assert ops("torch", "cpu") is ops("torch", torch.device("cpu"))
    assert ops("auto", "cpu").name == "torch"
    for _ in range(2):
        with pytest.raises(ValueError, match="backend must be one of"):
            ops("cuda-magic", "cpu")


def test_a_sparse_layer_launches_three_kernels_and_no_torch_compute(monkeypatch):
    """The host work of a sparse call through the transformers entry (after the first, which builds the cached band
    index): exactly three Triton launches (Q and K pooled together, the selection with every ladder step, the sparse
    attention) and, besides them, only four allocations and one view: no reduction for the stats' density, no copy, no host
    read (on a machine without CUDA the Triton kernels run in the CPU interpreter)."""
    from torch.utils._python_dispatch import _disable_current_modes

    from prism_mm.attention import PrismLayer, prism_attention_forward
    from prism_mm.kernels import block_select, block_sparse, pool
    from prism_mm.stats import PrismRunStats

    launches = []

    class Counted:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(self.name)
                with _disable_current_modes():  # the kernel's own work is not the host path's
                    return self.kernel[grid](*args, **kwargs)
            return launch

    kernels = ((pool, "_pool_bands_kernel"), (block_select, "_select_kernel"), (block_sparse, "_block_sparse_fwd"))
    for module, name in kernels:
        monkeypatch.setattr(module, name, Counted(name, getattr(module, name)))

    n, hq, hkv, d = 200, 4, 2, 64
    q = torch.randn(1, n, hq, d, device=DEVICE).transpose(1, 2)  # transformers' memory rope
    k, v = torch.randn(1, hkv, n, d, device=DEVICE), torch.randn(1, hkv, n, d, device=DEVICE)
    cfg = PrismConfig(block_size=32, min_sparse_len=0)

    class Attention(torch.nn.Module):
        layer_idx = 0

    module = Attention()
    module.prism = PrismLayer(cfg, RopeSpec(head_dim=d).bands(*cfg.band_dims(d)), PrismRunStats(), backend="triton")
    prism_attention_forward(module, q, k, v, None, scaling=d ** -0.5)  # the first call builds the cached band index
    module.prism.stats.reset()
    launches.clear()
    with Ops() as ops:
        out, _ = prism_attention_forward(module, q, k, v, None, scaling=d ** -0.5)
    assert launches == ["_pool_bands_kernel", "_select_kernel", "_block_sparse_fwd"]
    # four allocations (the pooled parts' one buffer, the selection's counts and lists, the output) and the output's
    # [B, H, L, D] view for the kernel: no split, no views of the pooled parts
    assert sorted(ops.names) == ["aten.empty.memory_format"] * 4 + ["aten.transpose.int"], sorted(ops.names)
    record = module.prism.stats.layers[0]
    assert record.sparse and record.known_density is None  # counted only when read
    assert 0 < float(record.density.mean()) <= 1 and out.shape == (1, n, hq, d)
