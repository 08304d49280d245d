"""The example study of docs/studies.md is the file it shows, and its commands run."""

import json
import os
import re

from archjax.studies.__main__ import main

from .conftest import REPO

EXAMPLE = "experiments/studies/mlp_scaling.py"


def test_docs_show_the_example_file():
    with open(os.path.join(REPO, "docs", "studies.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    with open(os.path.join(REPO, EXAMPLE)) as f:
        assert blocks[0] == f.read()
    assert len(blocks[0].splitlines()) < 100


def test_example_study_runs_as_written(tmp_path, capsys, monkeypatch):
    # In this process, from outside the repo: the file is imported by its path (under
    # pytest the name `experiments` is tests/experiments).
    monkeypatch.chdir(tmp_path)
    spec = os.path.join(REPO, EXAMPLE)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", spec, "--quick", *workdir]) == 0
    assert "8/8 configs finished; trials COMPLETE 8" in capsys.readouterr().out
    assert main(["fit", spec, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    lo, hi = result["intervals"]["b"]
    assert result["frontier_points"] >= 4 and lo <= result["b"] <= hi
    assert main(["plot", spec, "--quick", *workdir]) == 0
    assert "loss_vs_compute.png" in capsys.readouterr().out
    assert (tmp_path / "plots" / "curves.png").exists()
