"""Shared by the ``make_*.py`` scripts: cells -> a validated notebook without outputs."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import nbformat


def build(cells: Sequence[tuple[str, str, str]]) -> nbformat.NotebookNode:
    """Returns the notebook of ``(cell_id, "markdown" | "code", source)`` cells."""
    new = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb = nbformat.v4.new_notebook()
    nb.cells = [new[kind](source, id=cell_id) for cell_id, kind, source in cells]
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def write(cells: Sequence[tuple[str, str, str]], output: pathlib.Path) -> None:
    """Writes the notebook of ``cells`` to ``output``."""
    nbformat.write(build(cells), output)
    print(f"Wrote {output}")
