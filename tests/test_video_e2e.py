"""benchmarks.video_e2e in its CPU smoke mode (tiny models): the per-stage records, the table and the plot are
produced from real forwards, and the stage times add up."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")  # the video processors
ROOT = Path(__file__).resolve().parent.parent


def test_video_e2e_smoke_writes_consistent_stage_records(tmp_path):
    """Also the row at recorded per-layer densities: a fidelity-style file with 3 layers (2 heads each) maps onto
    the tiny models' 2 decoder layers by relative depth (first and last); prism_mm's rows run with its fused RMSNorm
    modules and the transformers row with transformers' own, and --norm-ablation adds two rows with transformers'
    norms; the host table has its fused-norm modes."""
    fidelity = tmp_path / "fid.json"
    fidelity.write_text(json.dumps({"by_tokens": {"32768": {"prism_head_density": {
        "0.93": {"0": [0.1, 0.3], "1": [0.5, 0.5], "2": [0.7, 0.9]}}}}}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.video_e2e", "--smoke", "--out", str(tmp_path), "--reps", "1",
                           "--layer-densities", str(fidelity), "--norm-ablation"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "video_e2e.json").read_text())
    assert (tmp_path / "video_e2e.md").exists() and (tmp_path / "video_e2e.png").stat().st_size > 0
    rows = data["rows"]
    real = "varlen vision + Prism at real densities (fid, 0.93, 32K)"
    labels = ["transformers (sdpa)", "varlen vision + dense", "varlen vision + Prism 0.25", "varlen vision + Prism 0.1",
              real, "varlen vision + transformers' norms + dense", "varlen vision + transformers' norms + Prism 0.1"]
    for model in ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"):
        sizes = sorted({r["visual_tokens"] for r in rows if r["model"] == model})
        assert len(sizes) == 2
        for size in sizes:
            mine = [r for r in rows if r["model"] == model and r["visual_tokens"] == size]
            assert [r["row"] for r in mine] == labels
            assert [r["vision_attention"] for r in mine] == ["sdpa"] + ["varlen"] * 6
            assert [r["fused_norms"] for r in mine] == [False] + [True] * 4 + [False] * 2
            assert [r["decoder_density"] for r in mine[-2:]] == [1.0, 0.1]
            assert mine[4]["layer_densities"] == pytest.approx([0.2, 0.8]) and mine[4]["decoder_density"] == pytest.approx(0.5)
            for r in mine:
                assert r["processor_device"] == "cpu" and r["processor_cpu_s"] == r["processor_s"]  # no GPU here
                assert 0 < r["vision_s"] < r["prefill_s"]
                assert r["decoder_s"] == pytest.approx(r["prefill_s"] - r["vision_s"])
                assert r["first_token_s"] == pytest.approx(r["processor_s"] + r["prefill_s"])
                assert r["speedup_vs_transformers"] == pytest.approx(mine[0]["first_token_s"] / r["first_token_s"])
    host = data["meta"]["host_time"]
    # the host table's modes: transformers' norms, then dense and Prism 1.0 with the fused ones
    assert [h["mode"] for h in host] == ["dense sdpa", "prism, max_density 1.0", "prism, max_density 0.8",
                                         "dense sdpa + fused norms", "prism + fused norms, max_density 1.0"] * 2
    assert [h["fused_norms"] for h in host] == [False] * 3 + [True] * 2 + [False] * 3 + [True] * 2
    # 4 forwards x 2 layers per mode; on the CPU no layer follows a sync, so every layer counts as running ahead
    assert all(h["host_ms_per_layer"] > 0 and h["layer_samples"] == 4 * 2 and h["host_ms_after_sync"] is None
               for h in host)
    # the attention call timed inside each layer: part of the layer's time
    assert all(0 < h["attention_host_ms"] < h["host_ms_per_layer"] for h in host)
    assert "of it the attention call" in (tmp_path / "video_e2e.md").read_text()
    # the paired-layer table: every pair of modes per model, 2 forwards each (--smoke), layers of both modes timed
    from benchmarks.video_e2e import PAIRS

    pairs = data["meta"]["host_pairs"]
    assert [(h["a"], h["b"]) for h in pairs] == list(PAIRS) * 2
    for h in pairs:
        assert h["forwards"] == 2 and len(h["ratios"]) == 2
        assert h["ratio_median"] == pytest.approx((h["ratios"][0] * h["ratios"][1]) ** 0.5)  # one of each parity
        assert h["ratio_min"] <= h["ratio_median"] <= h["ratio_max"]
        assert 0 < h["a_attention_ms"] < h["a_ms_per_layer"] and 0 < h["b_attention_ms"] < h["b_ms_per_layer"]
        assert h["layer_samples"] == 2 * 2  # 2 forwards x 2 layers, none after a sync on the CPU
        # each forward's layer times; A on the even layers in one forward and on the odd ones in the other
        assert [f["a_on_even_layers"] for f in h["forward_layers"]] == [True, False]
        assert all(len(f["layer_us"]) == 2 and min(f["layer_us"]) > 0 and f["synced"] == [] for f in h["forward_layers"])
    assert "paired (host_pairs)" in (tmp_path / "video_e2e.md").read_text()
    # --host-time-only --merge: new host tables for one model, the other model's and every row and run of the file
    # kept as they were
    proc = subprocess.run([sys.executable, "-m", "benchmarks.video_e2e", "--smoke", "--out", str(tmp_path), "--merge",
                           "--host-time-only", "--models", "Qwen/Qwen3-VL-8B-Instruct"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "video_e2e.json").read_text())
    assert again["rows"] == rows and again["meta"]["runs"] == data["meta"]["runs"]
    models = ["Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"]
    assert [h["model"] for h in again["meta"]["host_time"]] == [models[0]] * 5 + [models[1]] * 5
    assert [h["model"] for h in again["meta"]["host_pairs"]] == [models[0]] * len(PAIRS) + [models[1]] * len(PAIRS)
    assert again["meta"]["host_time"][:5] == data["meta"]["host_time"][:5]
    assert again["meta"]["host_pairs"][:len(PAIRS)] == pairs[:len(PAIRS)]
    assert again["meta"]["host_pairs"][len(PAIRS):] != pairs[len(PAIRS):]  # measured again
    # --pair-forwards must be even: refused before anything runs
    proc = subprocess.run([sys.executable, "-m", "benchmarks.video_e2e", "--out", str(tmp_path / "odd"), "--pair-forwards",
                           "3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "argument --pair-forwards: host_pairs needs an even number of forwards >= 2, got 3" in proc.stderr


def test_host_pairs_runs_each_mode_on_alternate_layers(monkeypatch):
    """host_pairs: in every forward (2 warm-ups, then the timed ones) each decoder layer runs the attention function
    and the norms of its mode, A on the even layers in the first timed forward and the parity swapped every forward;
    a mode paired with itself keeps two sets of samples; the "prism" entry is registered back afterwards."""
    from transformers import AttentionInterface
    from transformers.integrations import sdpa_attention

    import prism_mm.attention as attention
    from benchmarks.video_e2e import NormSwitch, host_pairs
    from prism_mm import PrismConfig
    from prism_mm.models import enable_prism
    from prism_mm.norms import FusedRMSNorm
    from prism_mm.testing.tiny import build_tiny_model

    model = build_tiny_model("qwen2_5_vl", layers=4)
    enable_prism(model, PrismConfig.video(min_sparse_len=0, block_size=16), vision="sdpa", fused_norms=False)
    norms = NormSwitch(model)
    lm = model.model.language_model
    seen = []  # per attention call: (layer, function, its layer's norm fused)

    def spy(name, fn):
        def call(module, *args, **kwargs):
            layer = lm.layers[module.layer_idx]
            seen.append((module.layer_idx, name, isinstance(layer.input_layernorm, FusedRMSNorm)))
            return fn(module, *args, **kwargs)
        return call

    monkeypatch.setattr(attention, "prism_attention_forward", spy("prism", attention.prism_attention_forward))
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy("sdpa", sdpa_attention.sdpa_attention_forward))
    entry = AttentionInterface()["prism"]
    inputs = {"input_ids": torch.randint(0, 100, (1, 40))}
    pairs = (("Prism + fused norms", "transformers dense"), ("transformers dense", "transformers dense"))
    rows = host_pairs(model, inputs, norms, forwards=2, pairs=pairs)
    assert AttentionInterface()["prism"] is entry and not any(isinstance(m, FusedRMSNorm) for m in lm.modules())
    forwards = [seen[i:i + 4] for i in range(0, len(seen), 4)]
    assert len(forwards) == 2 * (2 + 2)  # per pair: 2 warm-ups + 2 timed
    for k, calls in enumerate(forwards[:4]):  # the first pair; forward k - 2 puts A on layer i when (i + k) is even
        assert [layer for layer, *_ in calls] == [0, 1, 2, 3]
        for layer, name, fused in calls:
            assert (name, fused) == (("prism", True) if (layer + k) % 2 == 0 else ("sdpa", False))
    assert all((name, fused) == ("sdpa", False) for calls in forwards[4:] for _, name, fused in calls)
    for row in rows:
        assert [f["a_on_even_layers"] for f in row["forward_layers"]] == [True, False]
        assert row["layer_samples"] == 2 * 4 and len(row["ratios"]) == 2  # the control pair too: both roles kept


def test_pair_samples_leave_out_synced_layers_and_the_ones_after_them():
    """pair_samples: with a sync before layers 0 and 4, each role keeps the layers two and three after a sync (one
    even, one odd per four); a role with no such layer (2 layers, the first synced) keeps all of its layers."""
    from benchmarks.video_e2e import pair_samples

    roles = [0, 1] * 4
    synced = [i % 4 == 0 for i in range(8)]
    assert pair_samples(roles, synced) == ([2, 6], [3, 7])
    assert pair_samples([1, 0] * 4, synced) == ([3, 7], [2, 6])
    assert pair_samples([0, 1], [True, False]) == ([0], [1])
    assert pair_samples([0, 1, 0], [False] * 3) == ([0, 2], [1])


def test_norm_switch_fuses_the_norms_of_the_layers_it_is_given():
    """NormSwitch.use(fused, layers): the RMSNorms inside each given decoder layer (also a norm nested in its attention
    module, as Qwen3's q_norm / k_norm) are fused or not as given; every other norm follows `fused`."""
    from benchmarks.video_e2e import NormSwitch
    from prism_mm.norms import FusedRMSNorm
    from prism_mm.testing.tiny import build_tiny_model

    model = build_tiny_model("qwen3_vl", layers=2)
    norms = NormSwitch(model)
    lm = model.model.language_model
    norms.use(False, {lm.layers[0]: True, lm.layers[1]: False})
    first = [m for m in lm.layers[0].modules() if "Norm" in type(m).__name__]
    second = [m for m in lm.layers[1].modules() if "Norm" in type(m).__name__]
    assert len(first) == 4 and all(isinstance(m, FusedRMSNorm) for m in first)  # 2 layer norms, q_norm, k_norm
    assert len(second) == 4 and not any(isinstance(m, FusedRMSNorm) for m in second)
    assert not isinstance(lm.norm, FusedRMSNorm)
    norms.use(True, {lm.layers[0]: False})
    assert not any(isinstance(m, FusedRMSNorm) for m in lm.layers[0].modules())
    assert all(isinstance(m, FusedRMSNorm) for m in lm.layers[1].modules() if "Norm" in type(m).__name__)
    assert isinstance(lm.norm, FusedRMSNorm) and norms.fused is False


def test_fixed_attention_takes_the_selection_of_its_layer():
    """benchmarks.common's 'prism_fixed' entry runs each layer on selections[(layer, heads, tokens)] when present and
    falls back to selections[(heads, tokens)]: outputs equal the kernel's twin on those selections."""
    from types import SimpleNamespace

    import torch
    from transformers import AttentionInterface

    from benchmarks.common import fixed_density_selection, register_benchmark_attentions
    from prism_mm.kernels import torch_ops

    gen = torch.Generator().manual_seed(0)
    n, h = 96, 2
    sparse, other = (fixed_density_selection(h, n, d, gen, 16, "cpu") for d in (0.3, 0.9))
    selections = {(1, h, n): sparse, (h, n): other}
    register_benchmark_attentions(selections)
    fn = AttentionInterface()["prism_fixed"]
    q, k, v = torch.randn(1, h, n, 32), torch.randn(1, 1, n, 32), torch.randn(1, 1, n, 32)
    for layer, sel in ((1, sparse), (0, other)):
        out, _ = fn(SimpleNamespace(layer_idx=layer), q, k, v, None, scaling=32 ** -0.5)
        expected = torch_ops.block_sparse_attention(q, k, v, sel, 32 ** -0.5).transpose(1, 2)
        assert torch.allclose(out, expected, atol=1e-5), layer
    assert not torch.equal(sparse.to_mask(), other.to_mask())
