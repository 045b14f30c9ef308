"""Test helpers around the tiny random-weight models (prism_mm.tiny_models, re-exported here for the tests):
synthetic model inputs for one video, and the model types the tests run over."""
from __future__ import annotations

import torch

from ..tiny_models import (  # noqa: F401 - the tests' import path
    CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    SPECIAL_TOKENS,
    TINY_MODELS,
    TOKEN_IDS,
    VOCAB_SIZE,
    build_tiny_model,
    build_tiny_processor,
    build_tiny_tokenizer,
    save_tiny,
    tiny_config,
    tiny_model_dir,
)

TINY_MODEL_TYPES = tuple(TINY_MODELS.values())


def video_inputs(config, frames: int = 4, grid: int = 8, text_before: int = 40, text_after: int = 20, seed: int = 0,
                 grid_w: int | None = None, pixel_device=None, pixel_dtype: torch.dtype = torch.float32):
    """Model inputs for one synthetic video (random pixels) between random text tokens.

    frames must be even (temporal patch 2); grid x grid_w (default grid) patches per frame; the video
    contributes frames/2 * grid * grid_w / 4 tokens.
    """
    g = torch.Generator().manual_seed(seed)
    vcfg = config.vision_config
    patch = vcfg.patch_size
    t, h, w = frames // vcfg.temporal_patch_size, grid, grid_w or grid
    n_video = t * h * w // vcfg.spatial_merge_size**2
    text = lambda n: torch.randint(0, 256, (n,), generator=g)  # noqa: E731

    def span(n):
        return [torch.tensor([config.vision_start_token_id]), torch.full((n,), config.video_token_id),
                torch.tensor([config.vision_end_token_id])]

    if config.model_type == "qwen3_vl":  # one <vision_start>...<vision_end> span per temporal patch
        video = [piece for _ in range(t) for piece in span(n_video // t)]
    else:
        video = span(n_video)
    ids = torch.cat([text(text_before), *video, text(text_after)])[None]
    shape = (t * h * w, 3 * vcfg.temporal_patch_size * patch * patch)
    if pixel_device is None:
        pixels = torch.randn(shape, generator=g).to(pixel_dtype)
    else:  # made where they are used (a million visual tokens are ~10 GB of pixels)
        pg = torch.Generator(device=pixel_device).manual_seed(seed)
        pixels = torch.randn(shape, generator=pg, device=pixel_device, dtype=pixel_dtype)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor([[t, h, w]]),
    }
    if needs_mm_token_type_ids():
        inputs["mm_token_type_ids"] = (ids == config.video_token_id).long() * 2  # 0 text, 1 image, 2 video
    return inputs


def needs_mm_token_type_ids() -> bool:
    """Newer transformers (>= 5.2x) compute MRoPE positions from mm_token_type_ids; older ones do not take it."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    return hasattr(modeling_qwen2_vl.Qwen2VLModel, "compute_3d_position_ids")
