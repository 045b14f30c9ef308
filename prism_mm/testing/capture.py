"""Capture each decoder layer's query / key / value (after RoPE or MRoPE) in a dense forward pass."""
from __future__ import annotations

import torch

CAPTURE = "prism_mm_capture"


def capture_qkv(model, ids=None, **inputs) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run a dense forward and keep each decoder layer's (query, key, value), keyed by layer index.

    Goes through transformers' AttentionInterface (SDPA computes the output), so nothing is patched.
    Works for text LMs (`ids`) and Qwen-VL models (processor inputs as keyword arguments); the model's
    attention implementation is restored afterwards.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    captured: dict[int, tuple] = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured[module.layer_idx] = (query.detach(), key.detach(), value.detach())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(CAPTURE, capture)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)
    vl = hasattr(model.config, "vision_config")
    previous = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation({"text_config": CAPTURE} if vl else CAPTURE)
    try:
        with torch.no_grad():
            model(ids, **inputs) if ids is not None else model(**inputs)
    finally:
        model.set_attn_implementation({"text_config": previous} if vl else previous)
    return captured
