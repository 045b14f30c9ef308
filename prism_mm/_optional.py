"""Imports of optional dependencies, failing with a one-line message that names the extra to install."""
from __future__ import annotations

import importlib


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says what to install."""


def require(module: str, extra: str, purpose: str):
    """Import and return `module`, or raise MissingDependencyError naming `pip install 'prism-mm[<extra>]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if not isinstance(e, ModuleNotFoundError):  # installed but broken (a missing shared library, ...)
            raise MissingDependencyError(f"{module} is installed but fails to import ({e}); {purpose} needs it: "
                                         "reinstall it") from e
        missing = (e.name or module).split(".")[0]  # qwen_vl_utils imports torchvision without declaring it
        if missing == "torchvision":  # in no extra: each release pins one torch, so pip would replace yours
            fix = ("install the torchvision release built for your torch, from the index your torch came from "
                   "(a plain `pip install torchvision` may replace torch)")
        else:
            fix = f"pip install 'prism-mm[{extra}]'"
        raise MissingDependencyError(f"{missing} is needed for {purpose}: {fix}") from None
