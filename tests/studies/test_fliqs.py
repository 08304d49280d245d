"""experiments/studies/fliqs.py --quick runs in-process: formats, BOPs budget, fine-tune."""

import json
import os

import optuna

from archjax import studies
from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments", "studies", "fliqs.py")


def test_fliqs_quick(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path / "fliqs")]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fliqs" / "fit.json") as f:
        result = json.load(f)
    assert set(result["uniform"]) == {"int4"}
    (entry,) = result["mixed"]
    # At the BOPs of uniform 4-bit weights only 4-bit formats fit: the best uniform is int4.
    assert entry["budget_bits"] == 4 and entry["best_uniform_test_accuracy"] == "int4"
    opt = optuna.load_study(
        study_name="fliqs_quick", storage=f"sqlite:///{tmp_path}/fliqs/study.db"
    )
    by = {r["scheme"]: r for r in studies.rows(opt)}
    assert by["mixed"]["bops"] <= by["mixed"]["budget_bops"] == by["int4"]["bops"]
    assert by["mixed"]["sensitivity"] <= by["int4"]["sensitivity"]
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "fliqs" / "plots" / "accuracy_vs_bops.png").exists()
