"""experiments/studies/plain_residual.py: the quick pipeline, and every full config is valid."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = "experiments/studies/plain_residual.py"


def test_full_configs_are_valid_main_job_overrides():
    from experiments.studies import common, plain_residual

    study = plain_residual.define(quick=False)
    assert len(study.configs) == 30  # (3 ResNets x plain/residual + 4 VGGs) x 3 seeds
    for config in study.configs:
        full = study.full_config(config)
        common.check_train_config(full)
        # The learning rates chosen on the baselines: He et al.'s 0.1, VGG-11's best 0.03.
        assert full["learning_rate"] == (0.03 if config["model"].startswith("vgg") else 0.1)
        assert full["dataset"] == "shapes" and full["num_steps"] == 1000


def test_quick_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = os.path.join(REPO, STUDY)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", spec, "--quick", *workdir, "--no-progress"]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", spec, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        table = json.load(f)["table"]
    assert [(e["family"], e["depth"]) for e in table] == [("plain", 8), ("residual", 8)]
    assert all(0 <= e["train_error"] <= 1 and e["params"] > 0 for e in table)
    assert all(0 <= e["train_error_running"] <= 1 for e in table)
    # Steps on the chance plateau: a logged step of the 4-step run (every 2 steps).
    assert all(e["plateau_steps"] in (2, 4) and e["left_plateau"] in (0, 1) for e in table)
    assert all(e["left_plateau"] == 1 or e["plateau_steps"] == 4 for e in table)
    assert table[0]["params"] < table[1]["params"]  # the residual net has projection shortcuts
    assert main(["plot", spec, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "error_vs_depth.png").exists()
