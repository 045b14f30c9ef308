"""enable_prism's parts (decoder attention, vision attention, MLP padding, fused norms, timing hooks): each one
switches on and off, disable_prism gives back the model as loaded, and save_pretrained writes the loaded checkpoint."""
import json

import pytest
import torch

from prism_mm import PrismConfig
from prism_mm.models import PARTS, disable_prism, enable_prism, prism_parts
from prism_mm.testing.tiny import tiny_config, video_inputs

transformers = pytest.importorskip("transformers")

# Sparse from the first block, so the decoder part changes the logits (and taking it off must change them back).
SPARSE = PrismConfig(block_size=16, threshold_high=0.6, threshold_low=0.6, min_sparse_len=0)
VL_PARTS = PARTS
TEXT_PARTS = ("decoder", "fused_norms", "stats")  # a text model has no vision tower


def tiny_vl(seed: int = 0):
    """A tiny Qwen2.5-VL (float32, CPU) whose vision MLP width (100) is not aligned, so pad_mlp has work to do."""
    from transformers import AutoModelForImageTextToText

    config = tiny_config("qwen2_5_vl")
    config.vision_config.intermediate_size = 100
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    return model, video_inputs(model.config, frames=4, grid=8, text_before=24, text_after=8)


def tiny_text(seed: int = 0):
    """A tiny Qwen2 causal LM (float32, CPU) and a 96-token prompt."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=384, max_position_embeddings=4096, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, {"input_ids": torch.randint(0, 384, (1, 96), generator=torch.Generator().manual_seed(seed))}


MODELS = {"qwen2_5_vl": (tiny_vl, VL_PARTS), "qwen2": (tiny_text, TEXT_PARTS)}


class Loaded:
    """What a model is as loaded: logits on fixed inputs, state dict, config, attention implementations, modules."""

    def __init__(self, model, inputs):
        self.inputs = inputs
        self.logits = logits(model, inputs)
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.config = model.config.to_json_string()
        self.attn = attn_implementations(model)
        self.modules = dict(model.named_modules())
        self.attributes = {name: set(vars(m)) for name, m in model.named_modules()}

    def check(self, model, same_object: bool = True):
        """`model` is as loaded (same_object: it is the model this record was taken of, with the same modules)."""
        state = model.state_dict()
        assert list(state) == list(self.state)
        for key, value in self.state.items():
            assert state[key].shape == value.shape and torch.equal(state[key], value), key
        assert torch.equal(logits(model, self.inputs), self.logits)
        assert model.config.to_json_string() == self.config
        assert attn_implementations(model) == self.attn
        modules = dict(model.named_modules())
        assert list(modules) == list(self.modules)
        for name, module in self.modules.items():
            assert modules[name] is module if same_object else type(modules[name]) is type(module), name
        assert {name: set(vars(m)) for name, m in modules.items()} == self.attributes  # no prism attributes left
        assert not hooks(model)
        assert prism_parts(model) == ()


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def attn_implementations(model):
    configs = [model.config, *(getattr(model.config, k, None) for k in ("text_config", "vision_config"))]
    return [c._attn_implementation for c in configs if c is not None]


def hooks(model) -> list[str]:
    """Modules that carry forward or state-dict hooks."""
    return [name for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._state_dict_hooks or m._state_dict_pre_hooks
            or m._load_state_dict_pre_hooks]


@pytest.mark.parametrize("model_type", MODELS)
def test_enable_then_disable_gives_back_the_model_as_loaded(model_type):
    """All parts on, a prefill that ran sparse, then disable_prism: logits, state dict (keys, values), config,
    attention implementations, module objects and attributes are those of the model as loaded; no hook is left."""
    build, parts = MODELS[model_type]
    model, inputs = build()
    loaded = Loaded(model, inputs)
    enable_prism(model, SPARSE, backend="torch")
    assert prism_parts(model) == parts
    assert hooks(model)
    out = logits(model, inputs)
    assert model.prism_stats.sparse_layers > 0 and not torch.equal(out, loaded.logits)  # Prism really ran
    assert disable_prism(model) is model
    loaded.check(model)
    enable_prism(model, SPARSE, backend="torch")  # and on again: the same as the first time
    assert torch.equal(logits(model, inputs), out)
    loaded.check(disable_prism(model))


@pytest.mark.parametrize("model_type", MODELS)
def test_each_part_switches_on_and_off_alone(model_type):
    """Each part alone: enable_prism with only that part on turns on that part and no other; disable_prism(model,
    part) gives back the model as loaded. And from all parts on, disable_prism(model, part) takes off that part only."""
    build, parts = MODELS[model_type]
    model, inputs = build()
    loaded = Loaded(model, inputs)
    off = {"decoder": False, "vision": "sdpa", "pad_mlp": False, "fused_norms": False, "stats": False}
    on = {"decoder": True, "vision": "varlen", "pad_mlp": True, "fused_norms": True, "stats": True}
    for part in parts:
        config = {"config": SPARSE} if part == "decoder" else {}
        enable_prism(model, **config, backend="torch", **{**off, part: on[part]})
        assert prism_parts(model) == (part,)
        logits(model, inputs)
        disable_prism(model, part)
        loaded.check(model)
    for part in parts:
        enable_prism(model, SPARSE, backend="torch")
        disable_prism(model, [part])
        assert prism_parts(model) == tuple(p for p in parts if p != part)
        logits(model, inputs)
        disable_prism(model)
        loaded.check(model)


def test_a_later_call_turns_off_what_it_does_not_ask_for():
    """enable_prism sets every part as its arguments say: a second call with fused_norms=False and vision="sdpa"
    puts back transformers' norm modules and the tower's attention as loaded, and its MLP widths (pad_mlp follows
    vision)."""
    model, _ = tiny_vl()
    enable_prism(model, SPARSE, backend="torch")
    enable_prism(model, SPARSE, backend="torch", vision="sdpa", fused_norms=False)
    assert prism_parts(model) == ("decoder", "stats")
    assert model.config.vision_config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="unknown parts"):
        disable_prism(model, "norms")
    with pytest.raises(ValueError, match="decoder=True"):
        enable_prism(model, SPARSE, decoder=False)


def test_save_pretrained_after_enable_prism_writes_the_loaded_checkpoint(tmp_path):
    """With every part on (the vision MLPs padded 100 -> 128 wide), save_pretrained writes what the model as loaded
    writes: the same tensor names, shapes and values, the same config.json (intermediate_size 100); the saved model
    loads as the original. state_dict / load_state_dict of the padded model keep the loaded shapes too."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    model, inputs = tiny_vl()
    model.save_pretrained(tmp_path / "loaded")
    expected = logits(model, inputs)
    enable_prism(model, backend="torch")
    tower = model.model.visual
    assert {m.out_features for m in tower.blocks[0].mlp.modules() if isinstance(m, torch.nn.Linear)} == {128, 64}
    model.save_pretrained(tmp_path / "enabled")
    saved, original = (load_file(tmp_path / d / "model.safetensors") for d in ("enabled", "loaded"))
    assert list(saved) == list(original)
    for key, value in original.items():
        assert saved[key].shape == value.shape and torch.equal(saved[key], value), key
    config, original_config = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("enabled", "loaded"))
    assert config == original_config and config["vision_config"]["intermediate_size"] == 100
    assert model.config.vision_config.intermediate_size == 100
    model.load_state_dict(model.state_dict())  # loaded shapes in, padded weights kept
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "enabled", dtype=torch.float32,
                                                        attn_implementation="sdpa").eval()
    assert torch.equal(logits(again, inputs), expected)


def test_stats_off_installs_no_hooks():
    """stats=False: no forward hook anywhere and no prefill timing, while the decoder layers still record their
    density; stats=True installs the timing hooks and a later stats=False call removes them."""
    model, inputs = tiny_vl()
    enable_prism(model, SPARSE, backend="torch", stats=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    logits(model, inputs)
    assert model.prism_stats.prefill_seconds is None and model.prism_stats.sparse_layers > 0
    enable_prism(model, SPARSE, backend="torch")
    assert model._forward_hooks and model.model.visual._forward_pre_hooks
    logits(model, inputs)
    assert model.prism_stats.prefill_seconds > 0 and model.prism_stats.vision_seconds > 0
    enable_prism(model, SPARSE, backend="torch", stats=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_stats_hooks_synchronize_only_the_models_devices(monkeypatch):
    """The timing hooks wait for the devices the model's parameters live on (model_devices), never for every visible
    GPU: here the model is said to live on cuda:1 and every synchronize names cuda:1."""
    from prism_mm import models

    model, inputs = tiny_vl()
    assert models.model_devices(model) == []  # a CPU model: nothing to wait for
    calls = []
    monkeypatch.setattr(models, "model_devices", lambda m: [torch.device("cuda", 1)] if m is model else [])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    monkeypatch.setattr(models, "synchronize_gpus", lambda: pytest.fail("synchronized every visible GPU"))
    enable_prism(model, SPARSE, backend="torch")
    logits(model, inputs)
    assert len(calls) == 4 and set(calls) == {torch.device("cuda", 1)}  # prefill start / end, tower start / end


def test_disable_prism_after_load_model_gives_the_model_from_pretrained(tmp_path):
    """load_model(attn="prism") (every part on) then disable_prism: the model transformers' from_pretrained gives; and
    load_model(attn="dense", fused_norms=True) (norms and timing hooks) comes back the same way."""
    from transformers import AutoModelForImageTextToText

    from prism_mm.models import load_model
    from prism_mm.testing.tiny import save_tiny

    path = save_tiny("qwen2_5_vl", tmp_path / "tiny")
    plain = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    loaded = Loaded(plain, video_inputs(plain.config, frames=2, grid=8, text_before=16, text_after=8))
    for kwargs in ({"attn": "prism", "backend": "torch"}, {"attn": "dense", "fused_norms": True}):
        model = load_model(str(path), dtype="float32", **kwargs)[0]
        assert prism_parts(model)
        loaded.check(disable_prism(model), same_object=False)
