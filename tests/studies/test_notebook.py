"""notebooks/05_scaling_study: the .ipynb matches its jupytext source and runs top to bottom."""

import pathlib
import sys

import jupytext
import nbclient
import nbformat
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "notebooks" / "05_scaling_study.py"
NOTEBOOK = SOURCE.with_suffix(".ipynb")


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Runs ``nb`` in a kernel of this interpreter, in the notebooks directory."""
    # ipykernel's own spec (no kernel directories searched): it launches sys.executable.
    manager = AsyncKernelManager(
        kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )
    assert manager.kernel_spec.argv[0] == sys.executable
    client = nbclient.NotebookClient(
        nb, km=manager, timeout=600, resources={"metadata": {"path": str(SOURCE.parent)}}
    )
    return client.execute()


def test_notebook_matches_its_source():
    paired = nbformat.read(NOTEBOOK, as_version=4)
    source = jupytext.read(SOURCE)
    assert [(c.cell_type, c.source) for c in paired.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ]
    assert any(c.get("outputs") for c in paired.cells if c.cell_type == "code")  # ships run


def test_notebook_runs():
    nb = execute(jupytext.read(SOURCE))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "queued on a re-run: []" in text and "95% interval" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]  # fmt: skip
    assert len(images) == 2


if __name__ == "__main__":  # writes the executed notebook (with outputs) next to its source
    nbformat.write(execute(jupytext.read(SOURCE)), NOTEBOOK)
    print(f"Wrote {NOTEBOOK}")
