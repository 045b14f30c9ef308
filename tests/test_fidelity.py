"""The fidelity benchmark at a small size on real weights (SmolLM2-135M GGUF, offline), run as users run it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prism_mm.testing.weights import MissingWeights, smollm2_dir

pytest.importorskip("gguf")
ROOT = Path(__file__).resolve().parent.parent


def test_fidelity_small(tmp_path):
    try:
        smollm2_dir()
    except MissingWeights as e:
        pytest.skip(str(e))
    cmd = [sys.executable, "-m", "benchmarks.fidelity", "--tokens", "512", "--block-size", "64", "--layers", "0", "15",
           "--thresholds", "0.9", "--windows", "2", "4", "--analysis", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "fidelity-analysis.json").read_text())["by_tokens"]["512"]
    s = result["summary"]
    assert {"prism@0.9", "meanpool@0.9", "oracle@0.9", "tokq@0.9", "window@2", "window@4", "shared-oracle@0.5",
            "shared-prism@0.5", "shared-prism-mass@0.9", "shared-meanpool@0.5"} <= s.keys()
    for name, m in s.items():
        assert 0 < m["density"] <= 1 and 0 < m["recall"] <= 1 + 1e-6 and m["out_err"] >= 0, name
    # Top-p of the true mass keeps at least that much of it in every row (force-added blocks only add).
    assert s["oracle@0.9"]["recall"] >= 0.9 - 1e-4
    assert s["oracle@0.9"]["recall"] >= s["prism@0.9"]["recall"] - 1e-6 or s["oracle@0.9"]["density"] < s["prism@0.9"]["density"]
    assert s["window@2"]["density"] < s["window@4"]["density"] and s["window@2"]["recall"] < s["window@4"]["recall"]
    # The shared-budget rules keep the density they are given (above what the sink + diagonal blocks take), and the
    # oracle with the shared budget is the best any rule can do at its density.
    assert abs(s["shared-oracle@0.5"]["density"] - 0.5) < 0.01 and abs(s["shared-prism@0.5"]["density"] - 0.5) < 0.01
    assert s["shared-oracle@0.5"]["recall"] >= s["shared-prism@0.5"]["recall"] - 1e-6
    dens = result["prism_head_density"]["0.95"]
    assert len(dens) == 30 and all(len(h) == 9 and all(0 < x <= 1 for x in h) for h in dens.values())
    ml = result["model_level"]
    assert ml["dense"]["ppl"] > 1
    for name in ("prism default (0.95)", "prism video preset (0.93)"):
        assert 0.5 < ml[name]["top1_agreement"] <= 1 and 0 < ml[name]["mean_density"] <= 1
    assert (tmp_path / "fidelity-analysis.png").stat().st_size > 10_000
    assert "prism@0.9" in (tmp_path / "fidelity-analysis.md").read_text()


def test_shared_budget_rules():
    """The shared-budget rules of the benchmark on random scores: the budget is met over the whole layer, the mass
    rule reaches its target, forced blocks stay in, and the model-level entry at density 1.0 is dense attention."""
    from types import SimpleNamespace

    import torch

    from benchmarks.fidelity import SharedBudgetAttention, shared_budget, shared_mass
    from prism_mm import SpectralBands
    from prism_mm.kernels.blocks import causal_block_mask

    valid = causal_block_mask(1000, 1000, 64)  # 16 blocks, the last one partial
    probs = torch.softmax(torch.randn(3, 16, 16).masked_fill(~valid, float("-inf")), -1)
    total = int(valid.sum()) * 3
    for d in (0.3, 0.5):  # above the 31 of 136 blocks per head that sink + diagonal take
        m = shared_budget(probs, valid, d)
        assert int(m.sum()) == round(d * total) and not (m & ~valid).any() and m[..., 0].all()
        assert m[:, torch.arange(16), torch.arange(16)].all()
    m = shared_mass(probs, valid, 0.9)
    assert (probs * m).sum() / (3 * 16) >= 0.9 - 1e-6
    assert (shared_mass(probs, valid, 0.99).sum() >= m.sum())

    q, k, v = torch.randn(1, 4, 300, 16), torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16)
    rope = SimpleNamespace(bands=lambda hi, lo: SpectralBands(high=tuple(range(hi)), low=tuple(range(16 - lo, 16))))
    rule = SharedBudgetAttention(rope, 64)
    rule.density = 1.0
    out, _ = rule(SimpleNamespace(layer_idx=0), q, k, v, None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           is_causal=True).transpose(1, 2)
    assert rule.densities == {0: 1.0} and torch.allclose(out, ref, atol=1e-5)
    rule.density = 0.8  # 5 blocks: sink + diagonal take 9 of each head's 15
    rule(SimpleNamespace(layer_idx=1), q, k, v, None)
    assert abs(rule.densities[1] - 0.8) < 0.02
