"""What reaches a Qwen-VL model, captured by a global forward hook, for tests/test_lmms_parity.py.

install(path) registers one torch forward hook (all modules; once per process) that appends a JSON line to `path`
for each call of
- the text embedding (the token ids fed: a prompt, a question chunk or one decoding step),
- the vision tower (its grid and a hash per temporal patch of the pixel values it got, in the tower's dtype),
- the text decoder (its MRoPE position ids).
A task's utils.py can call it (load_into(task_dir, path)), so that it runs inside the real lmms-eval CLI, whichever
model class answers. answers(path) turns the lines into one record per answer, whether the prompt was prefilled in
one pass (transformers' generate) or as a video prefix plus question chunks (prism_mm).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

from prism_mm.testing.tiny import SPECIAL_TOKENS

VIDEO_PAD, VISION_END = SPECIAL_TOKENS["<|video_pad|>"], SPECIAL_TOKENS["<|vision_end|>"]
_FLAG = "_prism_parity_capture"


def _role(module) -> str | None:
    name = type(module).__name__
    if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= 256 and module.embedding_dim >= 128:
        return "embed"  # the tiny models' text embedding (the Qwen3-VL tower's position table has 64 rows)
    if name.endswith("VisionTransformerPretrainedModel") or name == "Qwen3VLVisionModel":
        return "visual"
    if name.endswith("TextModel"):
        return "lm"
    return None


def install(path: str):
    """Register the capture hook; returns its handle (None if this process has one already)."""
    if getattr(torch.nn.modules.module, _FLAG, False):
        return None
    setattr(torch.nn.modules.module, _FLAG, True)

    def hook(module, args, kwargs, output):
        role = _role(module)
        if role is None:
            return
        if role == "embed":
            event = {"role": role, "ids": (args[0] if args else kwargs["input"]).reshape(-1).tolist()}
        elif role == "visual":
            pixels = (args[0] if args else kwargs.get("hidden_states", kwargs.get("pixel_values"))).detach()
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            pixels, shas, row = pixels.contiguous().cpu(), [], 0
            for t, h, w in grid.tolist():
                for _ in range(t):
                    part = pixels[row:row + h * w].contiguous()
                    shas.append(hashlib.sha256(part.view(torch.uint8).numpy().tobytes()).hexdigest()[:16])
                    row += h * w
            event = {"role": role, "grid": grid.tolist(), "dtype": str(pixels.dtype), "patch_shas": shas}
        else:
            positions = kwargs.get("position_ids")
            event = {"role": role, "positions": None if positions is None else positions[-3:, 0].tolist()}
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")

    return torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)


@contextlib.contextmanager
def capturing(path: Path):
    """The hook installed in this process while the block runs."""
    handle = install(str(path))
    assert handle is not None, "a capture hook is installed already"
    try:
        yield
    finally:
        handle.remove()
        setattr(torch.nn.modules.module, _FLAG, False)


def load_into(task_dir: Path, path: Path) -> None:
    """Make the task's utils.py (imported by lmms-eval in its own process) install the hook, writing to `path`."""
    utils = Path(task_dir) / "utils.py"
    utils.write_text(utils.read_text() + f"""

import importlib.util as _importlib_util

_spec = _importlib_util.spec_from_file_location("prism_parity_capture", {str(Path(__file__).resolve())!r})
_capture = _importlib_util.module_from_spec(_spec)
_spec.loader.exec_module(_capture)
_capture.install({str(path)!r})
""")


def _merge(grid: list) -> list:
    """Consecutive grid rows of one frame size as one (a video's tower calls in batches of frame pairs)."""
    merged = []
    for t, h, w in grid:
        if merged and merged[-1][1:] == [h, w]:
            merged[-1][0] += t
        else:
            merged.append([t, h, w])
    return merged


def answers(path: Path) -> list[dict]:
    """One dict per answer, in the order answered: text (the prompt's text after the video, as characters), prompt
    (token ids), decoded (ids fed while decoding: the answer's tokens but its last), positions (MRoPE ids [3][n] of
    prompt + decoded), grid (the video's, merged), patch_shas, dtype (of the tower's pixels)."""
    units: list[dict] = []

    def new_unit():
        units.append({"prefix": [], "positions": [], "grid": [], "shas": [], "dtype": None, "answers": []})

    for line in Path(path).read_text().splitlines():
        e = json.loads(line)
        if e["role"] == "visual":
            if not units or units[-1]["answers"]:
                new_unit()
            units[-1]["grid"] += e["grid"]
            units[-1]["shas"] += e["patch_shas"]
            units[-1]["dtype"] = e["dtype"]
        elif e["role"] == "embed":
            ids = e["ids"]
            if VIDEO_PAD in ids:  # a prompt with its video: a new prefix (after its tower calls, or before them)
                if not units or units[-1]["answers"] or units[-1]["prefix"]:
                    new_unit()
                units[-1]["prefix"] = ids
            elif len(ids) > 1 or not units[-1]["answers"]:  # a question chunk, or the first decoding step
                units[-1]["answers"].append({"question": ids if len(ids) > 1 else [], "decoded": [] if len(ids) > 1
                                             else list(ids), "positions": []})
            else:
                units[-1]["answers"][-1]["decoded"] += ids
        elif e["positions"] is not None:
            unit = units[-1]
            (unit["answers"][-1]["positions"] if unit["answers"] else unit["positions"]).append(e["positions"])
    out = []
    for unit in units:
        for a in unit["answers"]:
            prompt = unit["prefix"] + a["question"]
            rows = [[p for chunk in unit["positions"] + a["positions"] for p in chunk[r]] for r in range(3)]
            after = prompt[len(prompt) - prompt[::-1].index(VISION_END):]
            out.append({"text": "".join(chr(i) for i in after if i < 256), "prompt": prompt, "decoded": a["decoded"],
                        "positions": rows, "grid": _merge(unit["grid"]), "patch_shas": unit["shas"],
                        "dtype": unit["dtype"]})
    return out
