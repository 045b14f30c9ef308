"""load_model() / enable_prism() / disable_prism(): Prism on the text decoder of Qwen-VL (and Qwen / Llama text) models.

enable_prism puts its parts on a loaded model, each one switchable and reversible (PARTS): the decoder's attention,
the vision tower's attention, the tower's MLP padding, fused RMSNorm modules and the prefill timing hooks.
Attention goes through transformers' AttentionInterface: the text config's attention implementation becomes "prism"
and each decoder attention module carries its PrismLayer settings (module.prism); the vision tower of Qwen-VL models
gets prism_mm.vision's batched varlen attention the same way. Forward methods are never replaced, and disable_prism
gives back the model as loaded.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import time
import warnings
from importlib import resources
from pathlib import Path

import torch

from . import vision as vision_attention
from .attention import ATTN_NAME, PrismLayer, register_with_transformers
from .config import PrismConfig
from .norms import FusedRMSNorm, fuse_rms_norms, unfuse_rms_norms
from .spectral import rope_spec_from_config, text_config
from .stats import PrismRunStats
from .tiny_models import TINY_MODELS, tiny_model_dir

# The Qwen-VL model types prism_mm runs, with the side in pixels of their vision towers' patches.
VL_PATCH_SIZES = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
VL_MODEL_TYPES = tuple(VL_PATCH_SIZES)
TEXT_MODEL_TYPES = ("qwen2", "qwen3", "llama")
SUPPORTED_MODEL_TYPES = VL_MODEL_TYPES + TEXT_MODEL_TYPES
# Architectures whose config.json ships with prism_mm (no weights): load_model(name, random_weights=True).
SHIPPED_CONFIGS = {
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b-instruct.json",
    "Qwen/Qwen2.5-VL-3B-Instruct": "qwen2.5-vl-3b-instruct.json",
    "Qwen/Qwen3-VL-8B-Instruct": "qwen3-vl-8b-instruct.json",
}


class ModelNotAvailableError(OSError):
    """The model is neither a local directory nor reachable on the Hub."""


def shipped_config(name: str):
    """The transformers config of a shipped architecture (see SHIPPED_CONFIGS)."""
    from transformers import AutoConfig

    if name not in SHIPPED_CONFIGS:
        raise ValueError(f"no shipped config for {name!r}; shipped: {sorted(SHIPPED_CONFIGS)}")
    data = json.loads(resources.files("prism_mm.configs").joinpath(SHIPPED_CONFIGS[name]).read_text())
    data.pop("_source", None)
    return AutoConfig.for_model(**data)


def _check_supported(config, name: str) -> None:
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{name!r} is a {config.model_type!r} model; prism_mm supports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def synchronize_gpus() -> None:
    """Wait for every visible GPU (a model may live on cuda:1, or across several with device_map="auto")."""
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def model_devices(model) -> list[torch.device]:
    """The CUDA devices the model's parameters and buffers live on (several with device_map="auto")."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers()) if t.device.type == "cuda"}
    return sorted(devices, key=lambda d: d.index or 0)


def synchronize_model(model) -> None:
    """Wait for the CUDA devices the model lives on, and no other."""
    for device in model_devices(model):
        torch.cuda.synchronize(device)


def vision_tower(model):
    """The vision tower module of a Qwen-VL model (model.model.visual), or None."""
    inner = getattr(model, "model", model)
    return getattr(inner, "visual", None)


def attach_stats(model, timing: bool = True) -> PrismRunStats:
    """Give the model a PrismRunStats (model.prism_stats, kept if it has one). timing: forward hooks time each prefill
    (and its vision tower) into it, synchronizing the devices the model lives on at its start and end; False removes
    them (no hook, no synchronization; the decoder layers still record into it)."""
    stats = getattr(model, "prism_stats", None)
    if not isinstance(stats, PrismRunStats):
        stats = model.prism_stats = PrismRunStats()
    if not timing:
        _remove_timing_hooks(stats)
    elif not stats.hooks:
        stats.hooks = _timing_hooks(model, stats)
    return stats


def _remove_timing_hooks(stats: PrismRunStats) -> None:
    for hook in stats.hooks:
        hook.remove()
    stats.hooks = []


def _timing_hooks(model, stats: PrismRunStats) -> list:
    """Forward hooks on the model (and its vision tower) that time each prefill into `stats`; their handles."""

    def seq_len(args, kwargs) -> int:
        for name in ("input_ids", "inputs_embeds"):
            t = kwargs.get(name)
            if t is not None:
                return t.shape[1]
        return args[0].shape[1] if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 1 else 0

    def sync():
        synchronize_model(model)

    def pre(module, args, kwargs):
        if seq_len(args, kwargs) <= 1:
            stats.prefill_started = None  # a decoding step
        elif stats.prefill_started is None:  # else the vision tower already started this prefill's clock
            sync()
            stats.vision_seconds = None
            stats.start_prefill()

    def post(module, args, kwargs, output):
        if stats.prefill_started is not None:
            sync()
            stats.end_prefill()

    hooks = [model.register_forward_pre_hook(pre, with_kwargs=True),
             model.register_forward_hook(post, with_kwargs=True)]
    tower = vision_tower(model)
    if tower is not None:  # the vision tower's share of the prefill (one sync before and after it)
        started = []

        def vision_pre(module, args):
            sync()
            started[:] = [time.perf_counter()]
            if stats.prefill_started is None:  # generate() may encode the video before the first forward
                stats.vision_seconds = 0.0
                stats.prefill_started = started[0]

        def vision_post(module, args, output):
            sync()
            stats.vision_seconds = (stats.vision_seconds or 0.0) + time.perf_counter() - started[0]

        hooks += [tower.register_forward_pre_hook(vision_pre), tower.register_forward_hook(vision_post)]
    return hooks


# The parts of enable_prism, each one of its arguments; disable_prism takes any of them off again.
PARTS = ("decoder", "vision", "pad_mlp", "fused_norms", "stats")


def enable_prism(model, config: PrismConfig | None = None, *, layer_configs: dict[int, PrismConfig] | None = None,
                 backend: str = "auto", decoder: bool = True, vision: str = "varlen", pad_mlp: bool | None = None,
                 fused_norms: bool = True, stats: bool = True):
    """Put Prism's parts on a loaded transformers model; returns the model. Each part is one argument (see PARTS), a
    later call sets them again (undoing those it turns off), and disable_prism(model) gives back the model as loaded.

    decoder: Prism block-sparse attention in the text decoder's prefill, the part that shortens long prefills. config
        applies to every layer unless layer_configs overrides it for a layer index; the RoPE bands come from the model's
        config (plain, sectioned or interleaved MRoPE).
    vision (Qwen-VL): "varlen" runs the vision tower's attention in a few batched launches per layer instead of one
        SDPA call per window or frame (prism_mm.vision); "sdpa" leaves the tower's attention as loaded.
    pad_mlp (Qwen-VL): zero-pads the tower's MLP widths to sizes cuBLAS runs fast, with the same outputs; state_dict
        and save_pretrained still give the checkpoint as loaded. None: with vision="varlen".
    fused_norms: replaces transformers' RMSNorm modules (decoder and tower) by prism_mm.norms.FusedRMSNorm, one Triton
        launch per norm on CUDA with transformers' rounding (measured in docs/lessons.md).
    stats: times each prefill into model.prism_stats through forward hooks that synchronize the model's devices;
        False installs no hook (the decoder layers still record their density there).
    """
    if vision not in VISION_ATTENTIONS:
        raise ValueError(f"vision must be one of {VISION_ATTENTIONS}, got {vision!r}")
    _check_supported(model.config, type(model).__name__)
    if not decoder and (config is not None or layer_configs):
        raise ValueError("config and layer_configs set Prism's decoder attention: pass decoder=True or drop them")
    is_vl = model.config.model_type in VL_MODEL_TYPES
    wanted = {"decoder": decoder, "vision": is_vl and vision == "varlen",
              "pad_mlp": is_vl and (vision == "varlen" if pad_mlp is None else pad_mlp),
              "fused_norms": fused_norms, "stats": stats}
    disable_prism(model, [part for part, on in wanted.items() if not on])
    if decoder or stats:
        run_stats = attach_stats(model, timing=stats)
    if decoder:
        config = config or (PrismConfig.video() if is_vl else PrismConfig())
        layers = _decoder_attention_modules(model)
        if not layers:
            raise ValueError(f"found no decoder attention layers in {type(model).__name__}: is it a supported model?")
        rope = rope_spec_from_config(text_config(model.config))
        for module in layers:
            cfg = (layer_configs or {}).get(module.layer_idx, config)
            module.prism = PrismLayer(cfg, rope.bands(*cfg.band_dims(rope.head_dim)), run_stats, backend)
        register_with_transformers()
        _switch_attention(model, text=ATTN_NAME)
    if wanted["vision"]:
        vision_attention.register_with_transformers()
        _switch_attention(model, vision=vision_attention.VISION_ATTN_NAME)
    tower = vision_tower(model)
    if wanted["pad_mlp"] and tower is not None:
        vision_attention.align_mlp_widths(tower)
    if fused_norms:
        fuse_rms_norms(model, backend)
        for module in model.modules():  # those fused by an earlier call take this call's backend
            if isinstance(module, FusedRMSNorm):
                module.backend = backend
    return model


def disable_prism(model, parts=PARTS):
    """Take Prism's parts off a model (all of them, or those named in `parts`, see PARTS); returns the model. With all
    of them off it is the model as loaded: transformers' attention implementations and RMSNorm modules, the tower's
    MLPs at their loaded widths, no hooks and no prism attributes. Parts that are off are left as they are."""
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; the parts are {PARTS}")
    if "fused_norms" in parts:
        unfuse_rms_norms(model)
    tower = vision_tower(model)
    if "pad_mlp" in parts and tower is not None:
        vision_attention.restore_mlp_widths(tower)
    if "vision" in parts:
        _restore_attention(model, "vision")
    if "decoder" in parts:
        for module in _decoder_attention_modules(model):
            if isinstance(getattr(module, "prism", None), PrismLayer):
                del module.prism
        _restore_attention(model, "text")
    stats = getattr(model, "prism_stats", None)
    if isinstance(stats, PrismRunStats):
        if "stats" in parts:
            _remove_timing_hooks(stats)
        if not stats.hooks and not _has_prism_layers(model):
            del model.prism_stats
    return model


def prism_parts(model) -> tuple[str, ...]:
    """The parts of enable_prism (PARTS) that are on now. "decoder": the decoder's layers carry Prism settings
    (set_attention switches them between "prism" and "dense"); "vision": the tower runs prism_mm.vision."""
    vcfg = getattr(model.config, "vision_config", None)
    tower = vision_tower(model)
    stats = getattr(model, "prism_stats", None)
    on = {"decoder": _has_prism_layers(model),
          "vision": vcfg is not None and vcfg._attn_implementation == vision_attention.VISION_ATTN_NAME,
          "pad_mlp": tower is not None and any(hasattr(m, "prism_mlp_padding") for m in tower.modules()),
          "fused_norms": any(isinstance(m, FusedRMSNorm) for m in model.modules()),
          "stats": isinstance(stats, PrismRunStats) and bool(stats.hooks)}
    return tuple(part for part in PARTS if on[part])


def _decoder_attention_modules(model) -> list:
    tcfg = text_config(model.config)
    return [m for m in model.modules()
            if getattr(m, "config", None) is tcfg and hasattr(m, "layer_idx") and hasattr(m, "q_proj")]


def _has_prism_layers(model) -> bool:
    return any(isinstance(getattr(m, "prism", None), PrismLayer) for m in model.modules())


ATTENTIONS = ("prism", "dense")


@contextlib.contextmanager
def dense_rows(model):
    """Inside the block, every query row of the decoder's Prism layers attends to every earlier key (dense SDPA): the
    text after a video (a question, a chat's turns), short and deciding the answer. Dense mode is dense already."""
    layers = [m.prism for m in model.modules() if isinstance(getattr(m, "prism", None), PrismLayer)]
    for layer in layers:
        layer.dense_rows = True
    try:
        yield
    finally:
        for layer in layers:
            layer.dense_rows = False
VISION_ATTENTIONS = ("varlen", "sdpa")


def set_attention(model, attn: str, vision: str | None = None) -> None:
    """Switch the text decoder of a model set up by enable_prism between "prism" and "dense" (SDPA), and, for
    Qwen-VL models, the vision tower between "varlen" (prism_mm.vision) and "sdpa" (None: leave it as it is)."""
    if attn not in ATTENTIONS:
        raise ValueError(f"attn must be one of {ATTENTIONS}, got {attn!r}")
    if vision is not None and vision not in VISION_ATTENTIONS:
        raise ValueError(f"vision must be one of {VISION_ATTENTIONS} or None, got {vision!r}")
    if attn == "prism" and not _has_prism_layers(model):
        raise ValueError("this model has no Prism settings: call prism_mm.enable_prism(model, config) first")
    if vision is not None and model.config.model_type in VL_MODEL_TYPES:
        vision_attention.register_with_transformers()
        vision = vision_attention.VISION_ATTN_NAME if vision == "varlen" else "sdpa"
    else:
        vision = None
    _switch_attention(model, text=ATTN_NAME if attn == "prism" else "sdpa", vision=vision)


def _attn_configs(model) -> dict:
    """The configs whose attention implementation prism_mm sets: "text" (the decoder's) and, for Qwen-VL, "vision"."""
    configs = {"text": text_config(model.config)}
    if model.config.model_type in VL_MODEL_TYPES:
        configs["vision"] = model.config.vision_config
    return configs


def _switch_attention(model, text: str | None = None, vision: str | None = None) -> None:
    """Set the decoder's and the tower's attention implementations (None: leave it), first noting each one as loaded
    in model.prism_loaded_attn (for disable_prism)."""
    configs, wanted = _attn_configs(model), {"text": text, "vision": vision}
    wanted = {part: name for part, name in wanted.items() if name is not None and part in configs}
    loaded = getattr(model, "prism_loaded_attn", {})
    for part in wanted:
        loaded.setdefault(part, configs[part]._attn_implementation)
    model.prism_loaded_attn = loaded
    _set_attn_implementations(model, wanted)


def _restore_attention(model, part: str) -> None:
    """Put back the attention implementation of `part` ("text" or "vision") noted by _switch_attention."""
    loaded = getattr(model, "prism_loaded_attn", None)
    if not loaded or part not in loaded:
        return
    _set_attn_implementations(model, {part: loaded.pop(part)})
    if not loaded:
        del model.prism_loaded_attn


def _set_attn_implementations(model, names: dict[str, str]) -> None:
    configs = _attn_configs(model)
    if model.config.model_type not in VL_MODEL_TYPES:
        model.set_attn_implementation(names["text"])
    else:
        model.set_attn_implementation({f"{part}_config": name for part, name in names.items()})
    for part, name in names.items():
        got = configs[part]._attn_implementation
        if got != name:  # transformers declines (with a logged warning) for classes it cannot switch at run time
            raise RuntimeError(f"transformers kept attn_implementation={got!r} for {type(model).__name__} instead of "
                               f"{name!r} (it logs why): this model class cannot switch its attention after loading; "
                               "use a model class whose attention goes through transformers' AttentionInterface")


def _model_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if config.model_type in VL_MODEL_TYPES else AutoModelForCausalLM


def _resolve_dtype(dtype):
    if isinstance(dtype, str) and dtype != "auto":
        if not hasattr(torch, dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16, float32 or auto")
        return getattr(torch, dtype)
    return dtype


def load_model(
    name_or_path: str,
    attn: str = "prism",
    prism: PrismConfig | None = None,
    dtype="auto",
    device_map=None,
    random_weights: bool = False,
    backend: str = "auto",
    vision: str = "varlen",
    fused_norms: bool | None = None,
    **from_pretrained_kwargs,
):
    """Load a Qwen-VL (or Qwen / Llama text) model and its processor, with Prism or dense attention.
    name_or_path: a hub id, a local directory or a tiny model name (resolve_model says how each is found).
    vision: the vision tower's attention with attn="prism"; fused_norms: the fused RMSNorm (both: see enable_prism;
    None: with attn="prism", not with "dense", which is then the model as transformers ships it).

    Returns (model, processor); processor is None for random_weights=True, whose answers are
    meaningless (use it for speed measurements only). The model carries model.prism_stats.
    """
    if attn not in ATTENTIONS:
        raise ValueError(f"attn must be one of {ATTENTIONS}, got {attn!r}")
    dtype = _resolve_dtype(dtype)
    if random_weights:
        if from_pretrained_kwargs:
            raise ValueError(f"random_weights=True builds the model from its config; these from_pretrained arguments "
                             f"would be ignored: {sorted(from_pretrained_kwargs)}")
        shipped = name_or_path in SHIPPED_CONFIGS
        config = shipped_config(name_or_path) if shipped else _load_config(resolve_model(name_or_path))
        _check_supported(config, name_or_path)
        warnings.warn(f"{name_or_path}: random weights (architecture only) - its answers are meaningless; "
                      "use it to measure speed", stacklevel=2)
        config._attn_implementation = "sdpa"
        device = device_map if isinstance(device_map, (str, torch.device)) and device_map != "auto" else None
        with torch.device(device or "cpu"):
            model = _model_class(config).from_config(config, dtype=None if dtype == "auto" else dtype)
        model.eval()
        model.prism_random_weights = True
        processor = None
    else:
        kw = from_pretrained_kwargs
        source = resolve_model(name_or_path, kw.get("revision"), kw.get("cache_dir"), kw.get("gguf_file"))
        config = _load_config(source, **{k: v for k, v in kw.items() if k in CONFIG_KWARGS})
        _check_supported(config, name_or_path)
        model = _model_class(config).from_pretrained(
            source, dtype=dtype, device_map=device_map, attn_implementation="sdpa", **kw
        ).eval()
        processor = _load_processor(source, config, **kw)
    if fused_norms is None:
        fused_norms = attn == "prism"
    if attn == "prism":
        enable_prism(model, prism, backend=backend, vision=vision, fused_norms=fused_norms)
    else:
        attach_stats(model)
        if fused_norms:
            fuse_rms_norms(model, backend)
    return model, processor


def _load_offline_aware(loader, name_or_path: str, what: str, fix: str, **kwargs):
    """loader.from_pretrained(...), turning "not found / no hub access" into a ModelNotAvailableError."""
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(
            f"{what} {name_or_path!r} is not available offline: {fix} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def check_model_path(name_or_path: str) -> None:
    """A local path that cannot be a model directory gets a ValueError saying what to pass instead (hub ids pass)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise ValueError(f"model {name_or_path!r} is a file, not a model directory: pass the directory that holds "
                         "config.json and the weights, or a hub id such as Qwen/Qwen2.5-VL-7B-Instruct")
    if path.is_dir() and not (path / "config.json").exists() and not any(path.glob("*.gguf")):
        raise ValueError(f"model directory {name_or_path!r} has no config.json: pass the directory that holds "
                         "config.json and the weights (save_pretrained writes both)")
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not path.exists():
        raise ModelNotAvailableError(f"model directory {name_or_path!r} does not exist: pass an existing directory "
                                     "that holds config.json and the weights, or a hub id")


# from_pretrained arguments that also say where the config comes from
CONFIG_KWARGS = ("gguf_file", "cache_dir", "revision", "token", "local_files_only")
NOT_AVAILABLE_FIX = ("pass a local directory that holds its config and weights, or enable Hugging Face Hub access "
                     "(unset HF_HUB_OFFLINE and log in) to download it")


def resolve_model(name_or_path: str, revision: str | None = None, cache_dir=None, gguf_file: str | None = None) -> str:
    """What from_pretrained loads for a model name, the same for every entry point (load_model, VideoQA, the CLI, the
    lmms-eval model, the chat page):
    - a tiny model name (prism_mm.tiny_models.TINY_MODELS): its local directory, built on first use;
    - a local directory: itself (ValueError when it cannot be a model directory, see check_model_path);
    - a hub id: itself, when the local Hugging Face cache holds it, or when Hub access is on (HF_HUB_OFFLINE unset,
      as huggingface_hub decides it) and the Hub answers one request.
    Otherwise ModelNotAvailableError at once: with Hub access off no request is made; with it on, one request made
    without retries tells that the Hub is unreachable (from_pretrained would retry five times, about 23 s)."""
    if name_or_path in TINY_MODELS:
        return str(tiny_model_dir(name_or_path))
    check_model_path(name_or_path)
    if Path(name_or_path).expanduser().exists():
        return name_or_path
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name_or_path, gguf_file or "config.json", cache_dir=cache_dir,
                                        revision=revision)
    except ValueError:  # not a valid hub id: from_pretrained says why (ModelNotAvailableError)
        return name_or_path
    if isinstance(cached, str):
        return name_or_path
    if constants.HF_HUB_OFFLINE:
        raise ModelNotAvailableError(f"model {name_or_path!r} is not available offline (not in the local Hugging Face "
                                     f"cache, and Hub access is off): {NOT_AVAILABLE_FIX}")
    unreachable = _hub_unreachable(name_or_path, gguf_file or "config.json", revision)
    if unreachable:
        raise ModelNotAvailableError(f"model {name_or_path!r} is not available offline (not in the local Hugging Face "
                                     f"cache, and the Hub did not answer: {unreachable}): pass a local directory "
                                     "that holds its config and weights, or run where the Hub is reachable to "
                                     "download it")
    return name_or_path


def _hub_unreachable(repo_id: str, filename: str, revision: str | None) -> str | None:
    """None when the Hub answers one HEAD request for the file (whatever it answers), else why not; no retries."""
    import huggingface_hub

    try:
        huggingface_hub.get_session().head(huggingface_hub.hf_hub_url(repo_id, filename, revision=revision),
                                           timeout=huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - no answer of any kind (DNS, connection, timeout, proxy)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


def _load_config(source: str, **kwargs):
    """The config of a resolved model (resolve_model), or ModelNotAvailableError."""
    from transformers import AutoConfig

    return _load_offline_aware(AutoConfig, source, "model", NOT_AVAILABLE_FIX, **kwargs)


def _load_processor(name_or_path: str, config, **kwargs):
    from transformers import AutoProcessor, AutoTokenizer

    loader = AutoProcessor if config.model_type in VL_MODEL_TYPES else AutoTokenizer
    return _load_offline_aware(loader, name_or_path, "the processor/tokenizer of", "save it next to the weights", **kwargs)
