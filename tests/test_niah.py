"""The needle-in-a-haystack benchmark on real weights (SmolLM2-135M GGUF, offline) at a small size."""
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prism_mm.testing.weights import MissingWeights, smollm2_dir

pytest.importorskip("gguf")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    try:
        smollm2_dir()
    except MissingWeights as e:
        pytest.skip(str(e))
    from transformers import AutoTokenizer

    from prism_mm.testing.weights import SMOLLM2_GGUF

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)


def test_haystack_holds_each_needle_once_at_its_depth_within_the_length(tokenizer):
    from benchmarks.niah import make_haystack

    n = 3000
    sample = make_haystack(tokenizer, n, 3, random.Random(7))
    prefix = sample["prefix"]
    assert len(prefix) + max(map(len, sample["questions"])) <= n
    assert len(prefix) + max(map(len, sample["questions"])) >= n - 5
    text = tokenizer.decode(prefix)
    chars = len(text)
    for key, value, depth in sample["needles"]:
        sentence = f"The magic number for {key} is {value}."
        assert text.count(sentence) == 1 and len(value) == 7
        assert 0.1 <= depth <= 0.9
        assert abs(text.index(sentence) / chars - depth) < 0.1, (key, depth)
    for (key, _, _), q in zip(sample["needles"], sample["questions"]):
        assert f"magic number for {key}?" in tokenizer.decode(q)
    # Other seeds give other needles and haystacks.
    other = make_haystack(tokenizer, n, 3, random.Random(8))
    assert other["needles"] != sample["needles"] and other["prefix"] != prefix


def test_niah_small_run(tmp_path, tokenizer):
    cmd = [sys.executable, "-m", "benchmarks.niah", "--model", "smollm2-135m", "--tokens", "1024", "--haystacks", "1",
           "--needles", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "niah-smollm2-135m.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"dense", "prism default (0.95)", "prism video preset (0.93)", "prism@0.9", "prism@0.99",
                         "cutoff@0.001", "cutoff@0.002", "cutoff@0.005", "cutoff default (0.01)", "cutoff@0.02",
                         "cutoff@0.05", "meanpool (0.95)"}
    for name, r in rows.items():
        assert r["samples"] == 2 and r["tokens"] == 1024 and len(r["answers"]) == 2
        assert r["correct"] == sum(a["correct"] for a in r["answers"])
        assert all(a["correct"] == (re.findall(r"\d+", a["answer"])[:1] == [a["value"]]) for a in r["answers"])
        if name == "dense":
            assert r["mean_density"] == 1.0
        else:
            assert 0 < r["mean_density"] < 1, name  # Prism really ran sparse on the document
    assert (tmp_path / "niah-smollm2-135m.png").stat().st_size > 10_000
    assert "cutoff default" in (tmp_path / "niah-smollm2-135m.md").read_text()
