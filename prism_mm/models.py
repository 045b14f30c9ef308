"""load_model() / enable_prism(): Prism on the text decoder of Qwen-VL (and Qwen / Llama text) models.

Prism is attached through transformers' AttentionInterface: the text config's attention
implementation becomes "prism" and each decoder attention module carries its PrismLayer settings
(module.prism). The vision tower of Qwen-VL models gets prism_mm.vision's batched varlen attention the same way
(enable_prism(..., vision="sdpa") keeps transformers' own); forward methods are never replaced.
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from importlib import resources
from pathlib import Path

import torch

from . import vision as vision_attention
from .attention import ATTN_NAME, PrismLayer, register_with_transformers
from .config import PrismConfig
from .norms import fuse_rms_norms
from .spectral import rope_layout_from_config, text_config
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


def vision_tower(model):
    """The vision tower module of a Qwen-VL model (model.model.visual), or None."""
    inner = getattr(model, "model", model)
    return getattr(inner, "visual", None)


def attach_stats(model) -> PrismRunStats:
    """Give the model a PrismRunStats (model.prism_stats) and time each prefill forward into it."""
    existing = getattr(model, "prism_stats", None)
    if isinstance(existing, PrismRunStats):
        return existing
    stats = PrismRunStats()
    model.prism_stats = stats

    def seq_len(args, kwargs) -> int:
        for name in ("input_ids", "inputs_embeds"):
            t = kwargs.get(name)
            if t is not None:
                return t.shape[1]
        return args[0].shape[1] if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 1 else 0

    def sync():
        synchronize_gpus()

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

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)
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

        tower.register_forward_pre_hook(vision_pre)
        tower.register_forward_hook(vision_post)
    return stats


def enable_prism(model, config: PrismConfig | None = None, *, layer_configs: dict[int, PrismConfig] | None = None,
                 backend: str = "auto", vision: str = "varlen", fused_norms: bool = True):
    """Switch the text decoder of a loaded transformers model to Prism attention. Returns the model.

    config applies to every decoder layer unless layer_configs overrides it for a layer index.
    The RoPE band layout comes from the model's config (plain, sectioned or interleaved MRoPE).
    vision (Qwen-VL models): "varlen" runs the vision tower's attention in a few batched launches per layer
    and pads its MLP widths to GEMM-friendly sizes with zeros (prism_mm.vision; same outputs), "sdpa" leaves the
    tower as transformers has it (one SDPA call per window / frame).
    fused_norms: replace transformers' RMSNorm modules (decoder and tower) by prism_mm.norms.FusedRMSNorm, one Triton
    launch per norm on CUDA instead of about seven kernels, with transformers' rounding (H200, 131K tokens: 12.9x faster
    per decoder norm, Qwen2.5-VL-7B's tower 2.70 -> 2.24 s; docs/lessons.md); False keeps transformers' modules.
    """
    if vision not in VISION_ATTENTIONS:
        raise ValueError(f"vision must be one of {VISION_ATTENTIONS}, got {vision!r}")
    _check_supported(model.config, type(model).__name__)
    is_vl = model.config.model_type in VL_MODEL_TYPES
    config = config or (PrismConfig.video() if is_vl else PrismConfig())
    register_with_transformers()
    tcfg = text_config(model.config)
    rope = rope_layout_from_config(tcfg)
    stats = attach_stats(model)
    layers = 0
    for module in model.modules():
        if getattr(module, "config", None) is tcfg and hasattr(module, "layer_idx") and hasattr(module, "q_proj"):
            cfg = (layer_configs or {}).get(module.layer_idx, config)
            module.prism = PrismLayer(cfg, rope.bands(*cfg.band_dims(rope.head_dim)), stats, backend)
            layers += 1
    if layers == 0:
        raise ValueError(f"found no decoder attention layers in {type(model).__name__}: is it a supported model?")
    set_attention(model, "prism", vision if is_vl else None)
    tower = vision_tower(model)
    if is_vl and vision == "varlen" and tower is not None:
        vision_attention.align_mlp_widths(tower)
    if fused_norms:
        fuse_rms_norms(model, backend)
    return model


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
    if attn == "prism" and not any(hasattr(m, "prism") for m in model.modules()):
        raise ValueError("this model has no Prism settings: call prism_mm.enable_prism(model, config) first")
    name = ATTN_NAME if attn == "prism" else "sdpa"
    if model.config.model_type not in VL_MODEL_TYPES:
        model.set_attn_implementation(name)
    else:
        choice = {"text_config": name}
        if vision is not None:
            vision_attention.register_with_transformers()
            choice["vision_config"] = vision_attention.VISION_ATTN_NAME if vision == "varlen" else "sdpa"
        model.set_attn_implementation(choice)
    got = text_config(model.config)._attn_implementation
    if got != name:  # transformers declines (with a logged warning) for classes it cannot switch at run time
        raise RuntimeError(f"transformers kept attn_implementation={got!r} for {type(model).__name__} instead of {name!r} "
                           "(it logs why): this model class cannot switch its attention after loading; use a model "
                           "class whose attention goes through transformers' AttentionInterface")


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
