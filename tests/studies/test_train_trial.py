"""One real trial of the main job on the engine: metrics, curve, compute, own workdir.

Run in this process (tests/ is a package, so ``experiments`` is the repository's):
no second process imports JAX and the main job again.
"""

import os

import optuna

from archjax import studies
from archjax.studies.__main__ import main

from .conftest import REPO, TOY


def test_train_and_evaluate_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["run", f"{TOY}:main_job", "--workdir", str(tmp_path), "--no-progress"]) == 0
    opt = optuna.load_study(study_name="main_job", storage=f"sqlite:///{tmp_path}/study.db")
    (row,) = studies.rows(opt)
    assert row["state"] == "COMPLETE", row["error"]
    assert row["steps"] == 4 and 0 <= row["test_accuracy"] <= 1 and row["test_loss"] > 0
    assert row["params"] > 0 and row["flops_per_example"] > 0 and row["examples_seen"] == 128
    assert row["train_flops"] == 3 * row["flops_per_example"] * 128
    assert row["device_kind"] and row["wall_time"] > 0 and row["resumed_from"] is None
    assert studies.curves(opt)[row["trial"]][0] == [2, 4]  # the test loss at each eval
    assert os.listdir(tmp_path / "trials" / row["key"] / "checkpoints")
    assert opt.user_attrs["trial_function"] == "common.train_trial"
