"""experiments/studies/hawq.py --quick runs in-process: base run once, allocation, fine-tune."""

import json
import os
import re

import optuna
import pytest

from archjax import studies
from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments", "studies", "hawq.py")


def test_hawq_quick(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path / "hawq")]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    # One float base run and one trace file for the seed, shared by both trials.
    bases = tmp_path / "quant_float_bases"
    (base,) = [d for d in os.listdir(bases) if not d.endswith(".lock")]
    assert base.startswith("seed0_")
    assert os.listdir(bases / base / "checkpoints")
    assert (bases / base / "traces.json").exists()
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "hawq" / "fit.json") as f:
        (row,) = json.load(f)["by_budget"]
    assert row["bits"] == 4 and row["uniform_seeds"] == row["mixed_seeds"] == 1
    for key in ("uniform_test_accuracy", "mixed_test_accuracy", "mixed_ptq_accuracy"):
        assert 0 <= row[key] <= 1
    assert re.fullmatch(r"[01]/1 \(ties [01]\)", row["mixed_wins_test_accuracy"])
    opt = optuna.load_study(study_name="hawq_quick", storage=f"sqlite:///{tmp_path}/hawq/study.db")
    by = {r["scheme"]: r for r in studies.rows(opt)}
    # Uniform 4-bit fits the budget, so the allocation's sensitivity is no larger.
    assert by["uniform"]["avg_bits"] == 4 and by["mixed"]["avg_bits"] <= 4
    assert by["mixed"]["sensitivity"] <= by["uniform"]["sensitivity"]
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "hawq" / "plots" / "accuracy_vs_bits.png").exists()


def test_hawq_rejects_a_budget_that_is_not_a_candidate():
    from experiments.studies import hawq

    config = {**hawq.fixed_settings(True), "candidates": [2, 4, 8], "scheme": "mixed"}
    with pytest.raises(ValueError, match="bits=5 is not a candidate"):
        hawq.check({**config, "bits": 5, "seed": 0})
