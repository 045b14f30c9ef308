"""Each transformers internal prism_mm relies on, beyond its plain public API, checked on its own: when an upgrade moves
one, the failing test says which and what prism_mm uses it for (then fix the module named, and the upper bound on
transformers in pyproject.toml)."""
import inspect

import pytest
import torch
import transformers

from prism_mm.testing.tiny import build_tiny_model, build_tiny_processor, video_inputs

VERSION = ".".join(transformers.__version__.split(".")[:2])


def moved(thing: str, module: str, why: str) -> str:
    return f"transformers {VERSION} moved {thing}: prism_mm.{module} relies on it for {why}"


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def vl(request):
    return build_tiny_model(request.param)


def test_flash_substring_earns_cu_seqlens_in_the_vision_tower():
    """A vision tower hands cu_seqlens to an attention function only for implementation names holding "flash"."""
    from transformers import AttentionInterface

    from prism_mm.vision import VISION_ATTN_NAME

    msg = moved('the "flash" name test that gives a Qwen-VL vision tower\'s attention cu_seqlens '
                "(utils.generic.is_flash_attention_requested)", "vision",
                f"its batched varlen tower attention, registered as {VISION_ATTN_NAME!r}")
    from transformers.utils import generic

    assert hasattr(generic, "is_flash_attention_requested"), msg
    assert "flash" in VISION_ATTN_NAME
    model = build_tiny_model("qwen2_5_vl")
    seen = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs.get("cu_seq_lens_q"))
        return transformers.integrations.sdpa_attention.sdpa_attention_forward(module, query, key, value,
                                                                             attention_mask, **kwargs)

    AttentionInterface.register("prism_mm_test_flash_spy", spy)
    model.set_attn_implementation({"vision_config": "prism_mm_test_flash_spy"})
    inputs = video_inputs(model.config, frames=2, grid=8)
    with torch.no_grad():
        model.model.visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    assert seen and all(c is not None for c in seen), msg


def test_attention_interface_registration(vl):
    """AttentionInterface.register + set_attn_implementation({"text_config": name}) routes the decoder's attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    msg = moved("AttentionInterface / AttentionMaskInterface registration or set_attn_implementation per sub-config",
                "attention", 'routing the decoder\'s attention to "prism" without replacing a forward')
    calls = []

    def spy(module, query, key, value, attention_mask, scaling=None, **kwargs):
        calls.append((getattr(module, "layer_idx", None), query.dim()))
        return transformers.integrations.sdpa_attention.sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    AttentionInterface.register("prism_mm_test_spy", spy)
    AttentionMaskInterface.register("prism_mm_test_spy", sdpa_mask)
    previous = vl.config.get_text_config()._attn_implementation
    vl.set_attn_implementation({"text_config": "prism_mm_test_spy"})
    try:
        assert vl.config.get_text_config()._attn_implementation == "prism_mm_test_spy", msg
        with torch.no_grad():
            vl(**video_inputs(vl.config, frames=2, grid=8))
    finally:
        vl.set_attn_implementation({"text_config": previous})
    layers = vl.config.get_text_config().num_hidden_layers
    assert sorted(i for i, _ in calls) == list(range(layers)), msg  # each decoder layer, with its layer_idx
    assert all(d == 4 for _, d in calls), msg  # query [B, H, L, D]


def test_sdpa_mask_keywords():
    """attention.prism_mask_function reads sdpa_mask's keywords to tell a plain causal mask (it builds none)."""
    from transformers import masking_utils

    msg = moved("masking_utils.sdpa_mask's keywords (mask_function, attention_mask, local_size, "
                "allow_is_causal_skip) or causal_mask_function", "attention",
                "skipping the [q, kv] causal mask of an unpadded prompt (prism_mask_function)")
    assert hasattr(masking_utils, "causal_mask_function"), msg
    params = inspect.signature(masking_utils.sdpa_mask).parameters
    assert {"mask_function", "attention_mask", "local_size", "allow_is_causal_skip"} <= set(params), msg
    assert params["mask_function"].default is masking_utils.causal_mask_function, msg


def test_get_rope_index_signature_and_rope_deltas(vl):
    """pipelines.prefill computes the whole prompt's MRoPE positions once, then runs the decoder chunk by chunk."""
    msg = moved("model.model.get_rope_index(input_ids, video_grid_thw=...) -> (position_ids, rope_deltas) or "
                "model.model.rope_deltas", "pipelines.prefill",
                "the MRoPE positions of a chunked prefill and the text positions after a reused video prefix")
    inner = vl.model
    assert hasattr(inner, "get_rope_index") and hasattr(inner, "rope_deltas"), msg
    params = inspect.signature(inner.get_rope_index).parameters
    assert list(params)[0] == "input_ids" and "video_grid_thw" in params, msg
    inputs = video_inputs(vl.config, frames=2, grid=8)
    kwargs = {k: inputs[k] for k in ("mm_token_type_ids", "video_grid_thw", "attention_mask")
              if k in params and k in inputs}
    position_ids, deltas = inner.get_rope_index(inputs["input_ids"], **kwargs)
    n = inputs["input_ids"].shape[1]
    assert position_ids.shape[-1] == n and position_ids.shape[0] in (3, 4) and deltas.numel() == 1, msg


def test_language_model_and_visual_paths(vl):
    """The decoder is model.model.language_model (run chunk by chunk on inputs_embeds); the tower model.model.visual."""
    msg = moved("model.model.language_model / model.model.visual / model.lm_head or the decoder's keywords",
                "pipelines.prefill", "chunked and streamed prefill (the decoder fed inputs_embeds chunk by chunk)")
    inner = vl.model
    assert isinstance(getattr(inner, "language_model", None), torch.nn.Module), msg
    assert isinstance(getattr(inner, "visual", None), torch.nn.Module) and hasattr(vl, "lm_head"), msg
    params = set(inspect.signature(inner.language_model.forward).parameters)
    needed = {"inputs_embeds", "position_ids", "past_key_values", "use_cache"}
    if vl.config.model_type == "qwen3_vl":
        needed |= {"visual_pos_masks", "deepstack_visual_embeds"}
        assert getattr(vl.config.vision_config, "deepstack_visual_indexes", None), msg
    assert needed <= params, f"{msg} (missing {sorted(needed - params)})"
    assert isinstance(vl.config.video_token_id, int), msg


def test_vision_tower_output_fields(vl):
    """pipelines.prefill / stream take the merged features as pooler_output (Qwen3-VL: plus deepstack_features)."""
    msg = moved("the vision tower's output fields pooler_output / deepstack_features", "pipelines.prefill",
                "the video features a streamed prefill scatters into the decoder's input")
    inputs = video_inputs(vl.config, frames=2, grid=8)
    with torch.no_grad():
        out = vl.model.visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    visual_tokens = int((inputs["input_ids"] == vl.config.video_token_id).sum())
    assert hasattr(out, "pooler_output") and out.pooler_output.shape[0] == visual_tokens, msg
    if vl.config.model_type == "qwen3_vl":
        assert getattr(out, "deepstack_features", None) is not None, msg


def test_rms_norm_class_names():
    """norms.fuse_rms_norms swaps modules by class name: every RMSNorm class of the supported models is listed."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    from prism_mm.norms import RMS_NORM_CLASSES

    small = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=300)
    models = [build_tiny_model(t) for t in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")]
    models += [transformers.AutoModelForCausalLM.from_config(c(**small)) for c in (Qwen2Config, Qwen3Config, LlamaConfig)]
    for model in models:
        norms = {type(m).__name__: m for m in model.modules() if type(m).__name__.endswith("RMSNorm")}
        msg = moved(f"the RMSNorm classes of {type(model).__name__} (found {sorted(norms)})", "norms",
                    "swapping them for the fused RMSNorm (RMS_NORM_CLASSES lists them by name)")
        assert norms and set(norms) <= set(RMS_NORM_CLASSES), msg
        for m in norms.values():
            assert isinstance(m.weight, torch.nn.Parameter) and isinstance(m.variance_epsilon, float), msg


def test_dynamic_cache_layers():
    """pipelines.prefix keeps a video's prefix as each layer's (keys, values) and rebuilds caches with update()."""
    from transformers import DynamicCache

    msg = moved("DynamicCache(config=...), .update(keys, values, layer_idx) or .layers[i].keys / .values",
                "pipelines.prefix", "keeping a video's prefix and answering each question from a copy of it")
    config = build_tiny_model("qwen2_5_vl").config
    cache = DynamicCache(config=config)
    k, v = torch.randn(1, 2, 5, 64), torch.randn(1, 2, 5, 64)
    for i in range(config.get_text_config().num_hidden_layers):
        cache.update(k, v, i)
    assert torch.equal(cache.layers[0].keys, k) and torch.equal(cache.layers[0].values, v), msg
    assert cache.get_seq_length() == 5, msg


def test_processor_fields():
    """pipelines.video / stream call the processor's video_processor on frame chunks and read its size; the tokenizer
    finds the vision-span tokens."""
    msg = moved("the Qwen-VL processor's video_processor (size.shortest_edge / longest_edge, do_resize, "
                "do_sample_frames) or tokenizer", "pipelines.video", "processing frames in chunks as they decode, "
                "sized as lmms-eval's classes size them, and cutting the prompt after the video")
    for model_type in ("qwen2_5_vl", "qwen3_vl"):
        processor = build_tiny_processor(model_type)
        vp = getattr(processor, "video_processor", None)
        assert vp is not None, msg
        assert isinstance(vp.size.shortest_edge, int) and isinstance(vp.size.longest_edge, int), msg
        assert processor.tokenizer.convert_tokens_to_ids("<|vision_end|>") is not None, msg
        side = 2 * vp.patch_size * vp.merge_size
        out = vp(videos=[torch.zeros(2, 3, side, side, dtype=torch.uint8)], return_tensors="pt", do_resize=False,
                 do_sample_frames=False)
        assert {"pixel_values_videos", "video_grid_thw"} <= set(out), msg


def test_generate_logits_processors():
    """pipelines.prefill.Decoding rebuilds generate's logits processors for a greedy decode on a kept cache."""
    from transformers import generation

    names = ("RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor", "NoBadWordsLogitsProcessor",
             "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "SuppressTokensLogitsProcessor",
             "SuppressTokensAtBeginLogitsProcessor", "LogitsProcessorList")
    missing = [n for n in names if not hasattr(generation, n)]
    assert not missing, moved(f"transformers.generation.{', '.join(missing)}", "pipelines.prefill",
                              "decoding as generate(do_sample=False) does from a reused prefix")
