"""The example study of docs/studies.md is the file it shows, and its commands run."""

import json
import os
import re

from .conftest import REPO, cli

EXAMPLE = "experiments/studies/mlp_scaling.py"


def test_docs_show_the_example_file():
    with open(os.path.join(REPO, "docs", "studies.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    with open(os.path.join(REPO, EXAMPLE)) as f:
        assert blocks[0] == f.read()
    assert len(blocks[0].splitlines()) < 100


def test_example_study_runs_as_written(tmp_path):
    workdir = ["--workdir", str(tmp_path)]
    out = cli("run", EXAMPLE, "--quick", *workdir).stdout
    assert "8/8 configs finished; trials COMPLETE 8" in out
    cli("fit", EXAMPLE, "--quick", *workdir)
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    lo, hi = result["intervals"]["b"]
    assert result["frontier_points"] >= 4 and lo <= result["b"] <= hi
    plotted = cli("plot", EXAMPLE, "--quick", *workdir).stdout
    assert "loss_vs_compute.png" in plotted and (tmp_path / "plots" / "curves.png").exists()
