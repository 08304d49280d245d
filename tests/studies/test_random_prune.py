"""The random_prune study's quick mode: the main-job runs, the store, the fit and the plot."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments", "studies", "random_prune.py")


def test_random_prune_quick_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", *workdir]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert set(result) >= {"dense - random ERK, 90% sparse @ width 0.25"}
    assert result["random ERK, 90% sparse: gap slope per width doubling"] is None  # one width
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert os.path.getsize(tmp_path / "plots" / "random_prune.png") > 0
