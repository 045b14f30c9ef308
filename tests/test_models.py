"""transformers integration: tiny random-weight Qwen-VL models with attn="prism" vs "dense"."""
import warnings

import pytest
import torch
from conftest import DEVICE, rel_err

from prism_mm import ModelNotAvailableError, PrismConfig, enable_prism, load_model
from prism_mm.testing.tiny import TINY_MODEL_TYPES, build_tiny_model, video_inputs

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForImageTextToText  # noqa: E402

ALL_BLOCKS = PrismConfig(block_size=16, threshold_high=1.0, threshold_low=1.0, min_sparse_len=0, max_density=1.0)


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def tiny_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    build_tiny_model(request.param, path, seed=1)
    return path


def load(path, prism: PrismConfig | None = None, backend="auto"):
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    return enable_prism(model, prism, backend=backend) if prism else model


def test_all_blocks_matches_dense_logits_and_generation(tiny_dir):
    dense, prism = load(tiny_dir), load(tiny_dir, ALL_BLOCKS)
    inputs = video_inputs(dense.config, frames=4, grid=8)
    with torch.no_grad():
        a, b = dense(**inputs).logits, prism(**inputs).logits
    assert rel_err(b, a) < 1e-4
    stats = prism.prism_stats
    assert stats.sparse_layers == dense.config.get_text_config().num_hidden_layers  # prism really ran
    assert stats.mean_density == pytest.approx(1.0)
    assert stats.prefill_seconds is not None and stats.prefill_seconds > 0
    assert 0 < stats.vision_seconds < stats.prefill_seconds
    # Text decoder on Prism, vision tower on the batched varlen entry (the dense model keeps SDPA in both).
    assert prism.config.get_text_config()._attn_implementation == "prism"
    assert prism.config.vision_config._attn_implementation == "prism_flash_varlen"
    assert dense.config.vision_config._attn_implementation == "sdpa"
    g_dense = dense.generate(**inputs, max_new_tokens=6, do_sample=False)
    g_prism = prism.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(g_dense, g_prism)


def test_sparse_selection_runs_and_reports_density(tiny_dir):
    cfg = PrismConfig(block_size=16, threshold_high=0.6, threshold_low=0.6, min_sparse_len=0)
    prism = load(tiny_dir, cfg)
    inputs = video_inputs(prism.config, frames=8, grid=8, text_before=60)
    with torch.no_grad():
        logits = prism(**inputs).logits
    assert torch.isfinite(logits).all()
    per_layer = prism.prism_stats.per_layer_density()
    assert len(per_layer) == prism.config.get_text_config().num_hidden_layers
    assert all(0 < d <= 1 for d in per_layer.values())
    heads = prism.prism_stats.per_head_density()
    assert heads.shape == (len(per_layer), prism.config.get_text_config().num_attention_heads)


def test_triton_backend_in_a_model(tiny_dir):
    """The Triton kernels (interpreter on CPU) inside a real model give the dense logits."""
    dense, prism = load(tiny_dir).to(DEVICE), load(tiny_dir, ALL_BLOCKS, backend="triton").to(DEVICE)
    inputs = {k: v.to(DEVICE) for k, v in video_inputs(dense.config, frames=2, grid=8, text_before=30, text_after=10).items()}
    tol = 2e-3 if DEVICE == "cuda" else 1e-4  # fp32 dots run as TF32 on GPU tensor cores (~5e-4 seen on H100)
    with torch.no_grad():
        assert rel_err(prism(**inputs).logits, dense(**inputs).logits) < tol


def test_padded_batch_falls_back_to_dense_correctly(tiny_dir):
    dense, prism = load(tiny_dir), load(tiny_dir, PrismConfig(block_size=16, min_sparse_len=0))
    one = video_inputs(dense.config, frames=2, grid=8, text_before=30)
    ids = one["input_ids"]
    pad = torch.full((1, 5), 256)
    batch = {
        **one,
        "input_ids": torch.cat([torch.cat([pad, ids], 1), torch.cat([pad, ids], 1)]),
        "attention_mask": torch.cat([torch.cat([torch.zeros(1, 5), torch.ones_like(ids)], 1)] * 2).long(),
        "pixel_values_videos": torch.cat([one["pixel_values_videos"]] * 2),
        "video_grid_thw": torch.cat([one["video_grid_thw"]] * 2),
    }
    if "mm_token_type_ids" in one:
        batch["mm_token_type_ids"] = (batch["input_ids"] == dense.config.video_token_id).long() * 2
    with torch.no_grad():
        a, b = dense(**batch).logits, prism(**batch).logits
    assert rel_err(b[:, 5:], a[:, 5:]) < 1e-4
    assert prism.prism_stats.sparse_layers == 0
    assert "padding or static-cache mask" in prism.prism_stats.summary()["dense_reasons"]


def test_module_without_prism_settings_gives_a_clear_error(tiny_dir):
    model = load(tiny_dir, ALL_BLOCKS)
    for module in model.modules():
        if hasattr(module, "prism"):
            del module.prism
    with pytest.raises(RuntimeError, match="enable_prism"):
        with torch.no_grad():
            model(**video_inputs(model.config, frames=2, grid=8))


def test_set_attention_switches_the_text_decoder_and_rejects_unknown_names(tiny_dir):
    from prism_mm.models import set_attention

    dense = load(tiny_dir)
    with pytest.raises(ValueError, match="enable_prism"):
        set_attention(dense, "prism")  # no Prism settings to switch to
    model = load(tiny_dir, ALL_BLOCKS)
    text, vision = model.config.get_text_config(), model.config.vision_config
    vision_attn = vision._attn_implementation
    for attn, expected in (("dense", "sdpa"), ("prism", "prism")):
        set_attention(model, attn)
        assert text._attn_implementation == expected and vision._attn_implementation == vision_attn
    for bad in ("sparse", "sdpa", "Prism"):
        with pytest.raises(ValueError, match="attn must be one of"):
            set_attention(model, bad)


def test_a_refused_switch_is_an_error_not_a_silent_dense_run(tiny_dir, monkeypatch):
    """When transformers declines to switch a model's attention (it only logs a warning, e.g. for a class that does
    not call AttentionInterface), enable_prism raises instead of leaving the model on SDPA."""
    model = load(tiny_dir)
    from transformers.modeling_utils import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "_can_set_attn_implementation", classmethod(lambda cls: False))
    with pytest.raises(RuntimeError, match="kept attn_implementation='sdpa'"):
        enable_prism(model, ALL_BLOCKS)


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="attn"):
        load_model("whatever", attn="sparse")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "missing-model"))
    with pytest.raises(ValueError, match="is a file, not a model directory"):
        load_model(__file__)
    with pytest.raises(ModelNotAvailableError, match="local directory"):
        load_model("no-such-org/no-such-model-xyz")
    from transformers import BertConfig

    BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="supports"):
        load_model(str(tmp_path))


def test_random_weights_from_shipped_config_warns(tmp_path):
    import json
    from importlib import resources

    from transformers import AutoConfig

    from prism_mm.models import SHIPPED_CONFIGS, shipped_config

    for name in SHIPPED_CONFIGS:
        text = shipped_config(name).get_text_config()
        assert text.hidden_size // text.num_attention_heads == 128 or text.head_dim == 128
    with pytest.raises(ValueError, match="shipped"):
        shipped_config("Qwen/Unknown")
    # The real 3B architecture is too heavy for CI: the same config, shrunken, through the same path.
    data = json.loads(resources.files("prism_mm.configs").joinpath("qwen2.5-vl-3b-instruct.json").read_text())
    data.pop("_source")
    data.update(num_hidden_layers=1, hidden_size=256, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1)
    data["vision_config"].update(depth=1, hidden_size=32, intermediate_size=32, num_heads=1, out_hidden_size=256)
    AutoConfig.for_model(**data).save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, processor = load_model(str(tmp_path), random_weights=True, dtype="float32")
    assert processor is None and model.prism_random_weights
    assert any("meaningless" in str(w.message) for w in caught)
    assert model.config.get_text_config()._attn_implementation == "prism"
