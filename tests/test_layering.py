"""The package's data flow goes one way (shared/DESIGN.md): front ends -> pipelines -> models -> attention ->
selection -> kernels. Checked on the import statements of every module, lazy imports inside functions included."""
import ast
import importlib.util
from pathlib import Path

import prism_mm

ROOT = Path(prism_mm.__file__).parent
# Layer of each module (dotted name below prism_mm); a module may import only from strictly lower layers, except
# inside its own package (kernels/*, testing/*, app/*, pipelines/video <- pipelines/session).
LAYERS = [
    {"kernels", "_optional"},
    {"config", "spectral", "tiny_models", "demo_clips"},
    {"selection", "stats"},
    {"attention", "vision", "norms"},
    {"models"},
    {"pipelines.frames"},
    {"pipelines.video", "pipelines.prefill"},
    {"pipelines.stream", "pipelines.record", "pipelines.report"},
    {"pipelines.prefix"},
    {"pipelines.session"},
    {"pipelines.qa"},
    {"pipelines.video_qa", "pipelines.demo", "eval", "app"},  # front ends: none imports another
    {"testing"},  # test helpers: no product module imports them
]


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"prism_mm.{module} has no layer in tests/test_layering.py: add it")


def internal_imports(path: Path) -> set[str]:
    """prism_mm modules imported by the file (relative imports resolved), as dotted names below prism_mm."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = ".".join(("prism_mm",) + parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            if node.module is None:  # from . import x: x is a module of the package
                found |= {f"{base}.{a.name}" for a in node.names}
            else:
                found.add(base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {f[len("prism_mm."):] for f in found if f and f.startswith("prism_mm.")}


def test_every_import_goes_down_the_layers():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__init__.py":
            continue  # the public API (and each subpackage's docstring module) re-exports
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = layer_of(module)
        for target in internal_imports(path):
            same_package = target.split(".")[0] == module.split(".")[0] and module.split(".")[0] in ("kernels", "testing", "app")
            if not same_package and layer_of(target) >= own and not (module == "pipelines.session" and target == "pipelines.video"):
                bad.append(f"prism_mm.{module} imports prism_mm.{target}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_kernels_import_nothing_else_from_the_package():
    for path in (ROOT / "kernels").glob("*.py"):  # __init__ included
        assert all(t.startswith("kernels") for t in internal_imports(path)), path.name


def test_the_app_imports_only_pipelines():
    """The chat page is a thin front end over prism_mm.pipelines."""
    for path in (ROOT / "app").glob("*.py"):
        assert all(t.startswith(("pipelines.", "app.")) for t in internal_imports(path)), path.name


def test_no_product_module_imports_the_test_helpers():
    """prism_mm.testing holds test helpers; the product (every module outside it, package __init__ files included)
    imports none of them: the tiny models and demo clips the front ends use live in prism_mm.tiny_models and
    prism_mm.demo_clips."""
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "testing":
            continue
        bad += [f"{path.relative_to(ROOT)} imports prism_mm.{t}" for t in internal_imports(path)
                if t == "testing" or t.startswith("testing.")]
    assert not bad, "product modules importing test helpers:\n" + "\n".join(bad)
