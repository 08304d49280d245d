"""The global_mp study's quick mode: the main-job runs, the store, the fit and the plot."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments", "studies", "global_mp.py")


def test_global_mp_quick_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", *workdir]) == 0
    assert "4/4 configs finished; trials COMPLETE 4" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert set(result) >= {
        "global MP @ 0.8",
        "SNIP @ 0.8",
        "global MP, gradual @ 0.8",
        "best @ 0.8",
    }
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert os.path.getsize(tmp_path / "plots" / "global_mp.png") > 0
