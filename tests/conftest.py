"""Test set-up: on a machine without CUDA, Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before Triton decorates the kernels, i.e. before prism_mm.kernels.*
is imported; that is why this happens here, at collection time.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (real sizes)")


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed():
    # Fresh random inputs on every run, but reproducible from the printed seed when a test fails.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed {seed}")
    yield seed


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; b must not be all zeros."""
    a64, b64 = a.double(), b.double()
    denom = b64.norm().item()
    assert denom > 0, "reference is all zeros: the comparison would be meaningless"
    return (a64 - b64).norm().item() / denom
