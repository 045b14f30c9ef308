"""Fused RMSNorm modules in place of transformers' Qwen RMSNorm modules (decoder and Qwen2.5-VL vision tower).

`fuse_rms_norms(model)` replaces every module of a class listed in RMS_NORM_CLASSES (whose forward is exactly
torch_ops.rms_norm's formula) by a FusedRMSNorm holding the same weight Parameter and epsilon: the state dict, the
outputs (up to the fp32 sum order) and the rounding stay those of transformers; on CUDA the norm is one Triton launch
instead of about seven elementwise kernels over an fp32 copy. Modules are swapped, no forward method is changed, and
`unfuse_rms_norms(model)` puts the original modules back.
"""
from __future__ import annotations

import torch

from .kernels import ops as kernel_ops

# transformers' RMSNorm classes whose forward is: fp32 x * rsqrt(mean(x^2) + eps), rounded to x's dtype, times weight
RMS_NORM_CLASSES = ("Qwen2RMSNorm", "Qwen2VLRMSNorm", "Qwen2_5_VLRMSNorm", "Qwen3RMSNorm", "Qwen3VLTextRMSNorm",
                    "LlamaRMSNorm")


class FusedRMSNorm(torch.nn.Module):
    """RMSNorm over the last dim through the ops layer (the Triton kernel on CUDA, transformers' formula elsewhere).
    With autograd recording (training) it runs the torch formula, which has a backward. `original`: the module it
    stands in for (kept out of the module tree: no state-dict keys of its own), which unfuse_rms_norms puts back."""

    def __init__(self, weight: torch.nn.Parameter, eps: float, backend: str = "auto",
                 original: torch.nn.Module | None = None):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps
        self.backend = backend
        self._original = (original,)  # a tuple: not registered as a submodule

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
        fused = FusedRMSNorm(child.weight, float(child.variance_epsilon), backend, original=child)
        setattr(parent, name, fused.train(child.training))
    return len(swaps)


def unfuse_rms_norms(model: torch.nn.Module) -> int:
    """Undo fuse_rms_norms: every FusedRMSNorm it made is replaced by the module it stood in for (the same object,
    given the current weight Parameter and train / eval flag); returns how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, FusedRMSNorm) and child._original[0] is not None]
    for parent, name, fused in swaps:
        original = fused._original[0]
        original.weight = fused.weight
        setattr(parent, name, original.train(fused.training))
    return len(swaps)
