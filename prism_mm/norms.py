"""Fused RMSNorm modules in place of transformers' Qwen RMSNorm modules (decoder and Qwen2.5-VL vision tower).

`fuse_rms_norms(model)` replaces every module of a class listed in RMS_NORM_CLASSES (whose forward is exactly
torch_ops.rms_norm's formula) by a FusedRMSNorm holding the same weight Parameter and epsilon: the state dict, the
outputs (up to the fp32 sum order) and the rounding stay those of transformers; on CUDA the norm is one Triton launch
instead of about seven elementwise kernels over an fp32 copy. Modules are swapped, no forward method is changed.
"""
from __future__ import annotations

import torch

from .kernels import ops as kernel_ops

# transformers' RMSNorm classes whose forward is: fp32 x * rsqrt(mean(x^2) + eps), rounded to x's dtype, times weight
RMS_NORM_CLASSES = ("Qwen2RMSNorm", "Qwen2VLRMSNorm", "Qwen2_5_VLRMSNorm", "Qwen3RMSNorm", "Qwen3VLTextRMSNorm",
                    "LlamaRMSNorm")


class FusedRMSNorm(torch.nn.Module):
    """RMSNorm over the last dim through the ops layer (the Triton kernel on CUDA, transformers' formula elsewhere).
    With autograd recording (training) it runs the torch formula, which has a backward."""

    def __init__(self, weight: torch.nn.Parameter, eps: float, backend: str = "auto"):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps
        self.backend = backend

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad)
        ops = kernel_ops("torch" if grad else self.backend, hidden_states.device)
        return ops.rms_norm(hidden_states, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, fused"


def _hooked(module: torch.nn.Module) -> bool:
    """Hooks that a swap would drop: accelerate's (device_map dispatch, offloading) or any forward hook."""
    return hasattr(module, "_hf_hook") or bool(module._forward_hooks) or bool(module._forward_pre_hooks)


def fuse_rms_norms(model: torch.nn.Module, backend: str = "auto") -> int:
    """Replace the model's transformers RMSNorm modules (RMS_NORM_CLASSES) by FusedRMSNorm; returns how many.
    Modules with hooks (accelerate's dispatch or offloading of that module, a user's forward hooks) are kept as they
    are: the swap would drop their hooks."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if (type(child).__name__ in RMS_NORM_CLASSES and isinstance(getattr(child, "weight", None), torch.nn.Parameter)
                    and not _hooked(child)):
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        fused = FusedRMSNorm(child.weight, float(child.variance_epsilon), backend)
        setattr(parent, name, fused.train(child.training))
    return len(swaps)
