"""prism_mm: Prism spectral-aware block-sparse attention for long-video Qwen-VL prefill."""
from .attention import PrismFallbackWarning, dense_attention, prism_attention
from .config import PrismConfig
from .selection import BlockSelection, estimate
from .spectral import RopeSpec, SpectralBands, rope_spec_from_config
from .stats import PrismRunStats, PrismStats


_MODEL_HELPERS = ("load_model", "enable_prism", "disable_prism", "set_attention", "ModelNotAvailableError",
                  "SUPPORTED_MODEL_TYPES")


def __getattr__(name):  # transformers is imported only when the model helpers are used
    if name in _MODEL_HELPERS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'prism_mm' has no attribute {name!r}")


def __dir__():  # dir() and help() list the lazily imported model helpers too
    return sorted(set(globals()) | set(_MODEL_HELPERS))

__all__ = [
    "BlockSelection",
    "PrismConfig",
    "PrismFallbackWarning",
    "PrismRunStats",
    "PrismStats",
    "ModelNotAvailableError",
    "SUPPORTED_MODEL_TYPES",
    "enable_prism",
    "disable_prism",
    "set_attention",
    "load_model",
    "RopeSpec",
    "SpectralBands",
    "dense_attention",
    "estimate",
    "prism_attention",
    "rope_spec_from_config",
]
__version__ = "0.1.0"
