"""Tiny random-weight Qwen-VL models (real architectures, toy sizes): model names that run anywhere.

They run on a CPU in seconds. Their answers are meaningless; their attention is real. The names in
TINY_MODELS (`tiny-qwen2.5-vl`, ...) are model names every entry point accepts (prism_mm.load_model, VideoQA,
the CLI, the lmms-eval model, the chat page): each is built once into ~/.cache/prism_mm (tiny_model_dir).
build_tiny_processor also gives the stand-in processor of a shipped architecture loaded with random weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

# Special token ids shared by the tiny models and the tiny tokenizer (build_tiny_tokenizer below).
VOCAB_SIZE = 384
SPECIAL_TOKENS = {
    "<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|vision_start|>": 259,
    "<|vision_end|>": 260, "<|vision_pad|>": 261, "<|image_pad|>": 262, "<|video_pad|>": 263,
}
TOKEN_IDS = dict(
    bos_token_id=256, eos_token_id=258, pad_token_id=256, vision_start_token_id=259, vision_end_token_id=260,
    vision_token_id=261, image_token_id=262, video_token_id=263,
)
# Model names users may pass (load_model, CLI --model, notebooks) -> the architecture of the tiny model built for them.
TINY_MODELS = {"tiny-qwen2-vl": "qwen2_vl", "tiny-qwen2.5-vl": "qwen2_5_vl", "tiny-qwen3-vl": "qwen3_vl"}
# The special-token ids of the real Qwen2-VL / Qwen2.5-VL / Qwen3-VL vocabularies.
QWEN_SPECIAL_TOKENS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}


def tiny_config(model_type: str = "qwen2_5_vl", layers: int = 2):
    """A toy config of a real Qwen-VL architecture: head_dim 64, GQA 2, MRoPE as in the real model."""
    from transformers import AutoConfig

    text = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB_SIZE, max_position_embeddings=32768, rms_norm_eps=1e-6,
                tie_word_embeddings=False)
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        vision = dict(depth=2, embed_dim=64, hidden_size=64 if model_type == "qwen2_5_vl" else 256, num_heads=2,
                      mlp_ratio=2, intermediate_size=128, out_hidden_size=256, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, in_chans=3, window_size=56, fullatt_block_indexes=[1],
                      tokens_per_second=2)
        return AutoConfig.for_model(model_type, **text, **TOKEN_IDS, rope_theta=1e6,
                                    rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}, vision_config=vision)
    if model_type == "qwen3_vl":
        text.update(head_dim=64, rope_theta=5e6,
                    rope_scaling={"mrope_interleaved": True, "mrope_section": [12, 10, 10], "rope_type": "default"})
        vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64,
                      deepstack_visual_indexes=[1])
        ids = {k: v for k, v in TOKEN_IDS.items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id")}
        text.update(bos_token_id=256, eos_token_id=258, pad_token_id=256)
        return AutoConfig.for_model("qwen3_vl", text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    raise ValueError(f"tiny models exist for {tuple(TINY_MODELS.values())}, not {model_type!r}")


def build_tiny_model(model_type: str = "qwen2_5_vl", path: str | Path | None = None, seed: int = 0, layers: int = 2):
    """A random-weight tiny model (float32, eval mode); saved with save_pretrained if `path` is given."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = tiny_config(model_type, layers)
    config._attn_implementation = "sdpa"
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    if path is not None:
        model.save_pretrained(path)
    return model


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(special: dict[str, int] | None = None):
    """A character-level tokenizer: ids 0..255 are code points, plus the Qwen special tokens at the
    ids of `special` (the tiny models' by default; QWEN_SPECIAL_TOKENS for the real architectures)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(256)}
    vocab.update(special or SPECIAL_TOKENS)
    vocab["<unk>"] = 264
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<unk>", additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_processor(model_type: str = "qwen2_5_vl", real_vocab: bool = False):
    """The real Qwen-VL processor class around the character-level tokenizer (needs torchvision).

    real_vocab=True places the special tokens at the real Qwen ids, for the shipped architectures.
    """
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tok = build_tiny_tokenizer(QWEN_SPECIAL_TOKENS if real_vocab else None)
    patch = 16 if model_type == "qwen3_vl" else 14
    image = Qwen2VLImageProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2)
    if model_type == "qwen3_vl":
        video = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
        return Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE)
    video = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    cls = Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE)


def save_tiny(model_type: str, path: str | Path, seed: int = 0, layers: int = 2) -> Path:
    """Save a tiny random-weight model and its processor to `path` (loadable with prism_mm.load_model)."""
    path = Path(path)
    build_tiny_model(model_type, path, seed=seed, layers=layers)
    build_tiny_processor(model_type).save_pretrained(path)
    return path


def tiny_model_dir(name: str, cache: str | Path | None = None) -> Path:
    """The local directory of the tiny model called `name` (a TINY_MODELS key), built there on first use.

    cache defaults to ~/.cache/prism_mm.
    """
    if name not in TINY_MODELS:
        raise ValueError(f"no tiny model called {name!r}; tiny models: {', '.join(TINY_MODELS)}")
    path = Path(cache or Path.home() / ".cache" / "prism_mm") / name
    if not (path / "config.json").exists() or not any(path.glob("*processor*")):
        save_tiny(TINY_MODELS[name], path)
    return path
