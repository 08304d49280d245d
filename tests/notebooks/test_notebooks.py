"""The notebooks under notebooks/: source and notebook agree, and every notebook runs.

Each notebook is a jupytext pair (notebooks/jupytext.toml): ``NN_name.py`` in the
py:percent format is the source, ``NN_name.ipynb`` holds the same cells with their
outputs. The pairs must agree cell by cell, every ``.ipynb`` is committed executed
(outputs of one top-to-bottom run, plots included), and every source is executed
here with nbclient in a fresh IPython kernel that runs *this* interpreter (so it
sees the same virtualenv and the same archjax checkout), with the notebook's
directory as working directory. The kernel inherits this process's environment,
so it gets the 8 host CPU devices that tests/conftest.py sets up.

The suite runs each notebook on a toy budget, as papermill does: a notebook's budget
knobs (steps, probes, depths) sit in one cell tagged ``parameters``, and the test
inserts a cell right after it that overrides them with ``TOY_PARAMETERS``. Every cell
still runs, the final ``assert``s included; the committed ``.ipynb`` holds the
outputs of the full budget.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import jupytext
import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
MAX_TOTAL_BYTES = 2 * 2**20  # every .ipynb together, outputs included
SYNC_HINT = "edit the .py, then run `jupytext --sync {py}` and `jupyter execute --inplace {nb}`"
# Values that replace the budget in each notebook's "parameters" cell in the suite: the
# smallest that keep the notebook's own assertions far from their thresholds (measured
# here: quickstart 91% test accuracy at 60 steps, bound 80%; IMP 91% sparse at 88%,
# bound 50% and the dense 82% - 10 points; w8a8 within 1 point of float at 50 steps;
# search: a 2-stage supernet of widths <= 16, its largest child 74% after 80 steps and
# the winner 74% after fine-tuning, bounds 30%; 20 s of CPU in all).
TOY_PARAMETERS = {
    "01_quickstart": {"NUM_STEPS": 60},
    "02_model_zoo": {"DEPTHS": [8, 20, 32]},
    "03_quantization": {"NUM_STEPS": 50},
    "04_curvature": {
        "NUM_STEPS": 30,
        "NUM_PROBES": 4,
        "LANCZOS_STEPS": 6,
        "SLQ_STEPS": 8,
        "SLQ_RUNS": 1,
    },
    "06_sparsity": {"STEPS": 40},
    "07_search": {
        "DEPTHS": ((1, 2), (1, 2)),
        "WIDTHS": ((4, 8), (8, 16)),
        "SUPERNET_STEPS": 80,
        "POPULATION": 4,
        "GENERATIONS": 2,
        "FINETUNE_STEPS": 40,
    },
}


def _ids(paths: list[pathlib.Path]) -> list[str]:
    return [p.name for p in paths]


def _hint(source: pathlib.Path) -> str:
    rel = source.relative_to(NOTEBOOK_DIR.parent)
    return SYNC_HINT.format(py=rel, nb=rel.with_suffix(".ipynb"))


def _kernel_manager() -> AsyncKernelManager:
    """A manager for ipykernel's own kernelspec, which launches `sys.executable`.

    With no kernel directories to search, the "python3" spec can only come from ipykernel
    itself, so a "python3" kernelspec installed elsewhere on the machine (a user's
    ~/.local/share/jupyter, another environment) cannot substitute another interpreter.
    """
    specs = KernelSpecManager(kernel_dirs=[])
    return AsyncKernelManager(kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=specs)


def _interpreter_check_cell() -> nbformat.NotebookNode:
    """A first cell that fails unless the kernel runs the same interpreter as pytest."""
    source = (
        "import sys\n"
        f"assert sys.executable == {sys.executable!r}, sys.executable\n"
        f"assert sys.prefix == {sys.prefix!r}, sys.prefix"
    )
    return nbformat.v4.new_code_cell(source, id="test-interpreter-check")


def _parameters_cell(nb: nbformat.NotebookNode) -> int:
    """The index of the notebook's one cell tagged ``parameters``."""
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells are tagged 'parameters', expected one"
    return tagged[0]


def _assigned_names(source: str) -> set[str]:
    """Names a cell's top-level statements assign."""
    return {
        node.id
        for stmt in ast.parse(source).body
        if isinstance(stmt, ast.Assign | ast.AnnAssign)
        for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
        for node in ast.walk(target)
        if isinstance(node, ast.Name)
    }


def _with_toy_parameters(nb: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """Inserts the toy budget right after the parameters cell (papermill's convention)."""
    toy = TOY_PARAMETERS.get(stem)
    if toy is None:
        return nb
    i = _parameters_cell(nb)
    unknown = set(toy) - _assigned_names(nb.cells[i].source)
    assert not unknown, f"{stem}: the parameters cell assigns no {sorted(unknown)}"
    source = "\n".join(f"{name} = {value!r}" for name, value in toy.items())
    cell = nbformat.v4.new_code_cell(source, id="test-toy-parameters")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)
    return nb


def test_notebooks_are_found():
    """SOURCES is not empty: a moved directory must fail here, not skip every notebook."""
    assert SOURCES, f"No notebook sources (NN_name.py) found in {NOTEBOOK_DIR}"


def test_every_notebook_is_a_pair():
    """Each source has its .ipynb and each .ipynb its source."""
    sources, notebooks = {p.stem for p in SOURCES}, {p.stem for p in NOTEBOOKS}
    assert not sources - notebooks, (
        f"No .ipynb for {sorted(sources - notebooks)}: run `jupytext --sync notebooks/NAME.py`."
    )
    assert not notebooks - sources, (
        f"No py:percent source for {sorted(notebooks - sources)}: "
        "run `jupytext --set-formats ipynb,py:percent notebooks/NAME.ipynb`."
    )


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_pair_is_in_sync(source: pathlib.Path):
    """The .ipynb holds exactly the cells of its source (outputs and metadata aside)."""
    cells = lambda nb: [(cell.cell_type, cell.source) for cell in nb.cells]  # noqa: E731
    py, nb = cells(jupytext.read(source)), cells(jupytext.read(source.with_suffix(".ipynb")))
    first = next((i for i, (a, b) in enumerate(zip(py, nb, strict=False)) if a != b), None)
    assert py == nb, (
        f"{source.name} ({len(py)} cells) and its .ipynb ({len(nb)} cells) differ from cell "
        f"{min(len(py), len(nb)) if first is None else first} on: " + _hint(source)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_executed(path: pathlib.Path):
    """Every code cell ran once, in order, without an error; every plot is saved as a PNG."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    hint = _hint(path.with_suffix(".py"))
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name} is not saved from one top-to-bottom run (execution counts {counts}): " + hint
    )
    for i, cell in enumerate(code):
        kinds = [out.output_type for out in cell.outputs]
        assert "error" not in kinds, f"{path.name}: code cell {i} holds an error: " + hint
        if "plt." in cell.source and ".subplots(" in cell.source:
            pngs = [out for out in cell.outputs if "image/png" in out.get("data", {})]
            assert pngs, f"{path.name}: code cell {i} draws a figure but holds no PNG: " + hint


def test_notebooks_are_small():
    """The committed notebooks stay small enough to diff and to load in a browser."""
    sizes = {p.name: p.stat().st_size for p in NOTEBOOKS}
    assert sum(sizes.values()) < MAX_TOTAL_BYTES, f"Notebooks take {sizes} bytes"


def test_kernel_is_this_interpreter():
    """The kernelspec the notebooks run under launches the interpreter running pytest."""
    assert _kernel_manager().kernel_spec.argv[0] == sys.executable


def test_toy_parameters_name_notebooks():
    """Every notebook named in TOY_PARAMETERS exists (a renamed one must not run in full)."""
    assert set(TOY_PARAMETERS) <= {p.stem for p in SOURCES}


@pytest.mark.parametrize("stem", sorted(TOY_PARAMETERS))
def test_parameters_cell_is_in_both_files(stem: str):
    """The ``parameters`` tag survives the pairing: the .py and the .ipynb tag the same cell."""
    source = NOTEBOOK_DIR / f"{stem}.py"
    py, nb = jupytext.read(source), nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert _parameters_cell(py) == _parameters_cell(nb), _hint(source)


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_notebook_runs(source: pathlib.Path):
    """Executes every cell of the source, on its toy budget, in order; any exception fails."""
    nb = _with_toy_parameters(jupytext.read(source), source.stem)
    nb.cells.insert(0, _interpreter_check_cell())
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(source.parent)}},
    )
    # The client does not own a kernel manager it is given: ask it to shut the kernel down.
    client.execute(cleanup_kc=True)
