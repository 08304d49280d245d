"""The lottery study's quick mode: the main-job runs, the store, the fit and the plot."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments", "studies", "lottery.py")


def test_lottery_quick_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", *workdir]) == 0
    assert "1/1 configs finished; trials COMPLETE 1" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert set(result) >= {
        "IMP, rewind to step 1 @ 0.550",
        "same masks reinit (k=1) @ 0.550",
        "dense_accuracy",
    }
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert os.path.getsize(tmp_path / "plots" / "lottery.png") > 0
