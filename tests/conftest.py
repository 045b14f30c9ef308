"""Test set-up: on a machine without CUDA, Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before Triton decorates the kernels, i.e. before prism_mm.kernels.*
is imported; that is why this happens here, at collection time.
"""
import os

# Tests never reach a model hub: a missing model fails at once instead of after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_addoption(parser):
    parser.addoption("--seed", default="0",
                     help="torch seed set before every test (default 0); 'random' draws a fresh one per test and "
                          "prints it, so a failure can be replayed with --seed N")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (real sizes)")


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed(request):
    option = request.config.getoption("--seed")
    seed = int.from_bytes(os.urandom(4), "little") if option == "random" else int(option)
    torch.manual_seed(seed)
    print(f"torch seed {seed} (replay: pytest --seed {seed} {request.node.nodeid})")
    yield seed


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; b must not be all zeros."""
    a64, b64 = a.double(), b.double()
    denom = b64.norm().item()
    assert denom > 0, "reference is all zeros: the comparison would be meaningless"
    return (a64 - b64).norm().item() / denom
