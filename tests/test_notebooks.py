"""The example notebooks: exactly the ones examples/make_notebooks.py writes are committed, with its cell
sources, executed (plots visible on GitHub); and each executes top to bottom from examples/ (where
Jupyter starts them; CPU, tiny model defaults), so none can rot.

Regenerate and execute them with: python examples/make_notebooks.py --execute
"""
import importlib.util
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
COMMITTED = sorted(EXAMPLES.glob("*.ipynb"))
REGENERATE = "python examples/make_notebooks.py --execute"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", EXAMPLES / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()
NAMES = sorted(GENERATOR.NOTEBOOKS)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _outputs(nb):
    return [o for c in _code_cells(nb) for o in c.get("outputs", [])]


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def _draws(cell) -> bool:
    return "plt.show()" in cell.source


def _errors(nb):
    return [f"{o.get('ename')}: {o.get('evalue')}" for o in _outputs(nb) if o.output_type == "error"]


def test_committed_notebooks_are_exactly_the_generated_ones():
    committed = {p.name for p in COMMITTED}
    assert committed == set(NAMES), (
        f"missing: {sorted(set(NAMES) - committed)}, not written by make_notebooks.py: {sorted(committed - set(NAMES))}; "
        f"run {REGENERATE} (and delete orphans)")


def test_notebooks_do_not_import_other_front_ends():
    # Notebooks are front ends (DESIGN.md): prism_mm only, no `benchmarks` package (not importable from examples/).
    for name in NAMES:
        for cell in _code_cells(GENERATOR.build(name)):
            assert not re.search(r"^\s*(from|import)\s+(benchmarks|lab|tests)\b", cell.source, re.M), (name, cell.source)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_up_to_date(name):
    """Same cells (type + source) as make_notebooks.py writes; outputs are not compared."""
    committed = nbformat.read(EXAMPLES / name, as_version=4)
    expected = GENERATOR.build(name)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in expected.cells], (
        f"examples/{name} is stale: run {REGENERATE}")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_executed(name):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    counts = [c.get("execution_count") for c in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"examples/{name} was not executed top to bottom in one kernel (execution counts {counts}): run {REGENERATE}")
    assert not _errors(nb), f"examples/{name} was committed with errors: {_errors(nb)}"
    plotting = [c for c in _code_cells(nb) if _draws(c)]
    assert plotting, f"examples/{name} draws no plot"
    assert all(_has_image(c) for c in plotting), f"examples/{name}: a plotting cell has no image/png output"


@pytest.fixture(scope="module")
def run_notebook():
    """run_notebook(name, cwd) -> the generated notebook executed in cwd (each (name, cwd) runs once per module)."""
    pytest.importorskip("qwen_vl_utils")
    nbclient = pytest.importorskip("nbclient")
    done = {}

    def run(name, cwd: Path = EXAMPLES):
        if (name, cwd) not in done:
            nb = GENERATOR.build(name)
            client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                                             resources={"metadata": {"path": str(cwd)}})
            client.execute()
            done[name, cwd] = nb
        return done[name, cwd]

    return run


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_from_examples(run_notebook, name):
    """As Jupyter runs it: working directory examples/."""
    nb = run_notebook(name, EXAMPLES)
    assert not _errors(nb)
    assert any(_has_image(c) for c in _code_cells(nb)), "the notebook should draw at least one plot"
    assert all(_has_image(c) for c in _code_cells(nb) if _draws(c)), "a plotting cell drew nothing"


def test_quickstart_runs_prism_sparse(run_notebook):
    """The quickstart shows what Prism selected, so Prism must really select blocks there."""
    nb = run_notebook("01_quickstart.ipynb", EXAMPLES)
    text = "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")
    found = re.search(r"Prism ran sparse in (\d+)/(\d+) decoder layers, mean density ([0-9.]+)", text)
    assert found, text
    sparse, layers, density = int(found[1]), int(found[2]), float(found[3])
    assert 0 < sparse == layers and density < 1.0, found[0]


def test_kernel_plots_run_from_repo_root(run_notebook):
    """The committed results are found from the repository root too (the notebook walks up to them)."""
    nb = run_notebook("03_kernel_benchmark_plots.ipynb", ROOT)
    assert not _errors(nb)
    assert any(_has_image(c) for c in _code_cells(nb))
