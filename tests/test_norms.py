"""prism_mm.norms: transformers' RMSNorm modules swapped for FusedRMSNorm, outputs unchanged."""
import importlib

import pytest
import torch
from conftest import DEVICE

from prism_mm.norms import RMS_NORM_CLASSES, FusedRMSNorm, fuse_rms_norms, unfuse_rms_norms

MODULES = {"Qwen2RMSNorm": "qwen2", "Qwen2VLRMSNorm": "qwen2_vl", "Qwen2_5_VLRMSNorm": "qwen2_5_vl",
           "Qwen3RMSNorm": "qwen3", "Qwen3VLTextRMSNorm": "qwen3_vl", "LlamaRMSNorm": "llama"}


@pytest.mark.parametrize("name", RMS_NORM_CLASSES)
def test_fused_norm_gives_what_each_swapped_transformers_class_gives(name):
    """Every class fuse_rms_norms swaps computes exactly what FusedRMSNorm computes (its torch path: the same ops), in
    bf16 with a bf16 weight and in fp32; a class whose formula changed in transformers fails here."""
    cls = getattr(importlib.import_module(f"transformers.models.{MODULES[name]}.modeling_{MODULES[name]}"), name)
    for dtype in (torch.bfloat16, torch.float32):
        original = cls(96, eps=1e-5).to(dtype)
        torch.nn.init.normal_(original.weight, 1.0, 0.2)
        fused = FusedRMSNorm(original.weight, original.variance_epsilon, backend="torch")
        x = 4 * torch.randn(3, 7, 96).to(dtype)
        with torch.no_grad():
            assert torch.equal(fused(x), original(x)), (name, dtype)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_fusing_the_norms_of_a_model_keeps_its_logits_and_weights(model_type):
    """fuse_rms_norms on a tiny Qwen-VL model swaps every transformers RMSNorm (decoder layers, final norm, Qwen2.5-VL's
    vision blocks and merger, Qwen3-VL's per-head q/k norms), shares the weight Parameters, keeps the state dict's keys
    and gives the same logits on a video prompt; unfuse_rms_norms puts the original modules back."""
    from prism_mm.testing.tiny import build_tiny_model, video_inputs

    model = build_tiny_model(model_type).to(DEVICE)
    inputs = {k: v.to(DEVICE) for k, v in video_inputs(model.config, frames=4, grid=8).items()}
    backend = "triton"  # the kernel (interpreter on the CPU) inside the whole model
    expected_count = sum(type(m).__name__ in RMS_NORM_CLASSES for m in model.modules())
    keys = list(model.state_dict())
    weights = {n: m.weight for n, m in model.named_modules() if type(m).__name__ in RMS_NORM_CLASSES}
    with torch.no_grad():
        ref = model(**inputs).logits
        assert fuse_rms_norms(model, backend) == expected_count > 0
        out = model(**inputs).logits
    assert not any(type(m).__name__ in RMS_NORM_CLASSES for m in model.modules())
    assert all(model.get_submodule(n).weight is w for n, w in weights.items())
    assert list(model.state_dict()) == keys
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()  # fp32: only the kernel's own sum order differs
    assert fuse_rms_norms(model, backend) == 0  # nothing left to swap
    fused = [n for n, m in model.named_modules() if isinstance(m, FusedRMSNorm)]
    assert unfuse_rms_norms(model) == expected_count  # the original modules back, with the same weights
    assert all(type(model.get_submodule(n)).__name__ in RMS_NORM_CLASSES for n in fused)
    assert all(model.get_submodule(n).weight is w for n, w in weights.items())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref)


def test_fused_norm_keeps_autograd():
    """With autograd recording, FusedRMSNorm runs the torch formula even when set to the Triton kernel (which has no
    backward): gradients reach the input and the weight."""
    norm = FusedRMSNorm(torch.nn.Parameter(torch.ones(16, device=DEVICE)), 1e-6, backend="triton")
    x = torch.randn(4, 16, device=DEVICE, requires_grad=True)
    norm(x).pow(2).sum().backward()
    assert x.grad is not None and norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_swap_keeps_hooked_modules_and_the_training_flag():
    """A norm with a forward hook (as accelerate's dispatch adds) is left as it is, so its hook still runs; swapped
    modules keep the original's train / eval flag."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    model = torch.nn.Sequential(Qwen2RMSNorm(8), Qwen2RMSNorm(8)).eval()
    calls = []
    model[1].register_forward_hook(lambda *args: calls.append(1))
    assert fuse_rms_norms(model) == 1
    assert isinstance(model[0], FusedRMSNorm) and not model[0].training and type(model[1]) is Qwen2RMSNorm
    model(torch.randn(2, 8))
    assert calls == [1]



def test_prism_fuses_the_norms_by_default_and_dense_loads_as_shipped(tmp_path):
    """enable_prism swaps the RMSNorm modules unless fused_norms=False; load_model fuses them with attn="prism" and
    leaves transformers' modules with attn="dense" (the model as shipped), unless told otherwise."""
    from prism_mm import enable_prism
    from prism_mm.models import load_model
    from prism_mm.testing.tiny import build_tiny_model, save_tiny

    def fused(model):
        kinds = {type(m).__name__ for m in model.modules()}
        assert ("FusedRMSNorm" in kinds) != bool(kinds & set(RMS_NORM_CLASSES)), kinds  # all swapped or none
        return "FusedRMSNorm" in kinds

    assert fused(enable_prism(build_tiny_model("qwen2_5_vl")))
    assert not fused(enable_prism(build_tiny_model("qwen2_5_vl"), fused_norms=False))
    path = save_tiny("qwen2_5_vl", tmp_path / "tiny")
    assert fused(load_model(str(path), attn="prism")[0])
    assert not fused(load_model(str(path), attn="dense")[0])
    assert fused(load_model(str(path), attn="dense", fused_norms=True)[0])
