"""benchmarks.questions in its CPU smoke mode (tiny model, short clips): every row answers every question of every
video, the reusing row builds each video's prefix once, the table and the plot are written, and a merged run of other
sizes keeps the earlier rows."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("decord")
ROOT = Path(__file__).resolve().parent.parent


def run(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.questions", "--smoke", "--out", str(out), "--seconds", "3",
                           "--clips", str(out / "clips"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "questions.json").read_text())


def test_questions_smoke_rows_and_reuse(tmp_path):
    data = run(tmp_path, "--videos", "2", "--questions", "2")
    assert (tmp_path / "questions.md").exists() and (tmp_path / "questions.png").stat().st_size > 0
    by_row = {}
    for r in data["rows"]:
        by_row.setdefault(r["row"], []).append(r)
    assert sorted(by_row) == ["prism_mm, no reuse", "prism_mm, reuse", "transformers as shipped"]
    for rows in by_row.values():
        assert [(r["video"], r["question"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert all(0 < r["first_token_s"] <= r["answer_s"] for r in rows)
    assert [r["reused"] for r in by_row["prism_mm, reuse"]] == [False, True, False, True]
    assert not any(r["reused"] for r in by_row["prism_mm, no reuse"] + by_row["transformers as shipped"])
    merged = run(tmp_path, "--videos", "1", "--questions", "2", "--rows", "transformers", "--merge")
    assert len(merged["rows"]) == 12  # the transformers row's video-0 questions replaced, the rest kept
    fresh = [r for r in merged["rows"] if r["row"] == "transformers as shipped" and r["video"] == 0]
    assert [r["first_token_s"] for r in fresh] != [r["first_token_s"] for r in by_row["transformers as shipped"][:2]]
    assert "| transformers as shipped | 4 (2 videos) |" in (tmp_path / "questions.md").read_text()
