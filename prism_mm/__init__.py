"""prism_mm: Prism spectral-aware block-sparse attention for long-video Qwen-VL prefill."""
from .attention import PrismStats, dense_attention, prism_attention
from .config import PrismConfig
from .selection import BlockSelection, estimate
from .spectral import RopeLayout, SpectralBands, rope_layout_from_config

__all__ = [
    "BlockSelection",
    "PrismConfig",
    "PrismStats",
    "RopeLayout",
    "SpectralBands",
    "dense_attention",
    "estimate",
    "prism_attention",
    "rope_layout_from_config",
]
__version__ = "0.1.0"
