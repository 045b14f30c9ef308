"""Packaging (issue 14): the declared dependencies, a plain install into a fresh environment, and the message of a
missing optional dependency."""
import importlib.metadata as md
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _requirements():
    """{(name, extra or None)} of the installed prism-mm's Requires-Dist."""
    found = set()
    for line in md.requires("prism-mm") or []:
        req = Requirement(line)
        extra = next((e for e in ("video", "eval", "dev", "app") if req.marker and req.marker.evaluate({"extra": e})), None)
        found.add((req.name.lower(), extra))
    return found


def test_metadata_declares_transformers_core_and_the_extras():
    reqs = _requirements()
    assert {("transformers", None), ("accelerate", None), ("torch", None)} <= reqs
    assert set(md.metadata("prism-mm").get_all("Provides-Extra")) == {"video", "eval", "dev", "app"}
    assert {("decord", "video"), ("qwen-vl-utils", "video"), ("av", "video"), ("lmms-eval", "eval"),
            ("pytest", "dev")} <= reqs


def test_metadata_lists_no_torchvision():
    """Each torchvision release pins one torch: listed, it would make pip replace the user's torch build."""
    assert not any(name == "torchvision" for name, _ in _requirements())


def _site_view(tmp_path: Path) -> Path:
    """A folder of links to this interpreter's site-packages, less prism-mm itself: everything else 'installed'."""
    view = tmp_path / "site-view"
    view.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if "prism_mm" not in entry.name and entry.suffix != ".pth":
            (view / entry.name).symlink_to(entry)
    return view


def test_editable_install_into_a_fresh_venv_then_load_model_checks_attn(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
    Path(fresh_site, "deps.pth").write_text(f"{_site_view(tmp_path)}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # --no-index: the core dependencies must already be satisfied (they are, through deps.pth), so nothing downloads.
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                              "--no-build-isolation", "-e", str(REPO)], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    check = ("import importlib.metadata as md, prism_mm\n"
             f"assert str(md.distribution('prism-mm').locate_file('')).startswith({fresh_site!r})\n"
             "try:\n"
             "    prism_mm.load_model('x', attn='bogus')\n"
             "except ValueError as e:\n"
             "    print(e)\n")
    run = subprocess.run([python, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "attn must be one of" in run.stdout and "'bogus'" in run.stdout


def test_missing_decoder_names_the_video_extra(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded: the decoder modules are missing")
    code = ("import sys\n"
            "sys.modules['decord'] = None\n"
            "sys.modules['av'] = None\n"
            "from prism_mm._optional import MissingDependencyError\n"
            "from prism_mm.pipelines.video import probe\n"
            "try:\n"
            f"    probe({str(clip)!r})\n"
            "except MissingDependencyError as e:\n"
            "    print(e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "pip install 'prism-mm[video]'" in run.stdout, run.stdout


def test_core_dependencies_are_bounded_at_the_tested_versions():
    """torch, triton and transformers carry an upper bound (prism_mm relies on internals of each), and the versions CI
    pins (requirements/ci.txt) satisfy the bounds."""
    import pytest
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    deps = {Requirement(d).name.lower(): Requirement(d) for d in
            tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    pinned = {}
    for line in (REPO / "requirements" / "ci.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pinned[name.lower()] = Version(version)
    for name in ("torch", "triton", "transformers"):
        spec = deps[name].specifier
        assert any(s.operator in ("<", "<=", "~=", "==") for s in spec), f"{name} has no upper bound in pyproject.toml"
        assert spec.contains(pinned[name]), f"CI's {name}=={pinned[name]} is outside pyproject.toml's {spec}"
