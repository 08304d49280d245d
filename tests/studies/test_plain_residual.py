"""experiments/studies/plain_residual.py: the quick pipeline, and every full config is valid."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = "experiments/studies/plain_residual.py"


def test_full_configs_are_valid_main_job_overrides():
    from experiments.studies import common, plain_residual

    study = plain_residual.define(quick=False)
    # (3 ResNets x plain/residual + 4 VGGs) x 3 seeds at 1000 steps, the ResNets again at 3000
    assert len(study.configs) == 30 + 18
    for config in study.configs:
        full = study.full_config(config)
        common.check_train_config(full)
        # The learning rates chosen on the baselines: He et al.'s 0.1, VGG-11's best 0.03.
        assert full["learning_rate"] == (0.03 if config["model"].startswith("vgg") else 0.1)
        long = full["num_steps"] == 3000 and not config["model"].startswith("vgg")
        assert full["dataset"] == "shapes" and (full["num_steps"] == 1000 or long)


def test_quick_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = os.path.join(REPO, STUDY)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", spec, "--quick", *workdir, "--no-progress"]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", spec, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        table = json.load(f)["table"]
    assert [(e["family"], e["depth"], e["steps"]) for e in table] == [
        ("plain", 8, 4),
        ("residual", 8, 4),
    ]
    assert all(0 <= e["train_error"] <= 1 and e["params"] > 0 for e in table)
    assert all(0 <= e["train_error_running"] <= 1 for e in table)
    # Steps on the chance plateau: a logged step of the 4-step run (every 2 steps).
    assert all(e["plateau_steps"] % 2 == 0 and e["left_plateau"] in (0, 1) for e in table)
    assert all(e["left_plateau"] == 1 or e["plateau_steps"] == e["steps"] for e in table)
    assert table[0]["params"] < table[1]["params"]  # the residual net has projection shortcuts
    assert main(["plot", spec, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "error_vs_depth.png").exists()


def test_fit_groups_runs_by_length():
    """The 1000- and 3000-step runs of one net are separate rows and separate deltas."""
    from experiments.studies import plain_residual

    def row(model, steps, seed, err):
        return {"state": "COMPLETE", "model": model, "model_kwargs.residual": True,
                "steps": steps, "seed": seed, "train_error": err, "test_error": err,
                "train_error_running": err, "plateau_steps": 50, "left_plateau": 1,
                "params": 1}  # fmt: skip

    rows = [row(m, n, s, e + 0.01 * s) for s in range(3)
            for m, n, e in [("resnet20", 1000, 0.1), ("resnet56", 1000, 0.6),
                            ("resnet20", 3000, 0.05), ("resnet56", 3000, 0.02)]]  # fmt: skip
    result = plain_residual.fit(rows)
    assert [(e["steps"], e["depth"]) for e in result["table"]] == [
        (1000, 20), (1000, 56), (3000, 20), (3000, 56)
    ]  # fmt: skip
    short = result["residual, 1000 steps: deepest - shallowest train error"]
    long = result["residual, 3000 steps: deepest - shallowest train error"]
    assert abs(short["delta"] - 0.5) < 1e-9 and short["interval"][0] > 0
    assert abs(long["delta"] + 0.03) < 1e-9 and long["interval"][1] < 0
