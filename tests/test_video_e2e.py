"""benchmarks.video_e2e in its CPU smoke mode (tiny models): the per-stage records, the table and the plot are
produced from real forwards, and the stage times add up."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")  # the video processors
ROOT = Path(__file__).resolve().parent.parent


def test_video_e2e_smoke_writes_consistent_stage_records(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.video_e2e", "--smoke", "--out", str(tmp_path), "--reps", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "video_e2e.json").read_text())
    assert (tmp_path / "video_e2e.md").exists() and (tmp_path / "video_e2e.png").stat().st_size > 0
    rows = data["rows"]
    labels = ["transformers (sdpa)", "varlen vision + dense", "varlen vision + Prism 0.25", "varlen vision + Prism 0.1"]
    for model in ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"):
        sizes = sorted({r["visual_tokens"] for r in rows if r["model"] == model})
        assert len(sizes) == 2
        for size in sizes:
            mine = [r for r in rows if r["model"] == model and r["visual_tokens"] == size]
            assert [r["row"] for r in mine] == labels
            assert [r["vision_attention"] for r in mine] == ["sdpa", "varlen", "varlen", "varlen"]
            for r in mine:
                assert 0 < r["vision_s"] < r["prefill_s"]
                assert r["decoder_s"] == pytest.approx(r["prefill_s"] - r["vision_s"])
                assert r["first_token_s"] == pytest.approx(r["processor_s"] + r["prefill_s"])
                assert r["speedup_vs_transformers"] == pytest.approx(mine[0]["first_token_s"] / r["first_token_s"])
    host = data["meta"]["host_time"]
    assert [h["mode"] for h in host] == ["dense sdpa", "prism, max_density 1.0", "prism, max_density 0.8"] * 2
    assert all(h["host_ms_per_layer"] > 0 for h in host)
