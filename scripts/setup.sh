#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with pinned dependencies and prism-mm.
# Idempotent; CPU-only machines get PyTorch's CPU build (see requirements/ci.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/ci.txt
.venv/bin/python -m pip install -q --no-deps -e .
