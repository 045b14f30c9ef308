"""benchmarks.long_prefill in its CPU smoke mode (tiny model): a chunked prefill runs end to end, and the dense
extrapolation is the measured run with the per-layer attention times swapped, as its docstring says."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_long_prefill_smoke_record_is_consistent(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.long_prefill", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "long_prefill.json").read_text())["rows"]
    assert row["visual_tokens"] > 0 and row["tokens"] > row["visual_tokens"]
    assert 0 < row["vision_s"] < row["prefill_s"]
    assert row["decoder_s"] == pytest.approx(row["prefill_s"] - row["vision_s"])
    swapped = row["prefill_s"] + row["layers"] * (row["attention_layer_dense_s"] - row["attention_layer_prism_s"])
    assert row["dense_prefill_s_extrapolated"] == pytest.approx(swapped)
    assert abs(row["attention_layer_selection_density"] - row["density"]) < 0.15
    assert (tmp_path / "long_prefill.png").stat().st_size > 0
