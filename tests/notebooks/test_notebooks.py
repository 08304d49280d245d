"""Every notebook under notebooks/ runs from top to bottom without an error.

Each notebook is executed with nbclient in a fresh IPython kernel that runs *this*
interpreter (so it sees the same virtualenv and the same archjax checkout), with the
notebook's directory as working directory. The kernel inherits this process's
environment, so it gets the 8 host CPU devices that tests/conftest.py sets up.
"""

from __future__ import annotations

import pathlib
import sys

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


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


def test_notebooks_are_found():
    """NOTEBOOKS is not empty: a moved directory must fail here, not skip every notebook."""
    assert NOTEBOOKS, f"No notebooks found in {NOTEBOOK_DIR}"


def test_kernel_is_this_interpreter():
    """The kernelspec the notebooks run under launches the interpreter running pytest."""
    assert _kernel_manager().kernel_spec.argv[0] == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_saved_without_outputs(path: pathlib.Path):
    """Notebooks are committed clean, so that their diffs show only what was edited."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: pathlib.Path):
    """Executes every cell in order; any exception (or a dead kernel) fails the test."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, _interpreter_check_cell())
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # The client does not own a kernel manager it is given: ask it to shut the kernel down.
    client.execute(cleanup_kc=True)
