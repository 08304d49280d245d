"""The ResNet-RS scaling study's quick mode: store, per-length table, gains, plot."""

import json
import math

from archjax.studies.__main__ import main

from .conftest import REPO

SPEC = f"{REPO}/experiments/studies/resnet_rs.py"


def test_quick_study_runs_fits_and_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", SPEC, "--quick", "--no-progress", *workdir]) == 0
    assert "8/8 configs finished; trials COMPLETE 8" in capsys.readouterr().out
    assert main(["fit", SPEC, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert (result["short_steps"], result["long_steps"]) == (2, 4)
    table = result["table"]
    assert {(e["strategy"], e["length"]) for e in table} == {
        (s, n) for s in ("base", "depth", "width", "resolution") for n in ("short", "long")
    }
    # The generalization gap is measured (train accuracy from the un-augmented train split).
    assert all(0 <= e["train_error"] <= 1 and -1 <= e["gap"] <= 1 for e in table)
    gains = result["gains_at_top_level"]
    assert set(gains) == {f"{n}_{s}" for n in ("short", "long")
                          for s in ("depth", "width", "resolution")}  # fmt: skip
    # Every strategy costs more FLOPs than the base it scales.
    assert all(g["flops_ratio"] > 1 for g in gains.values())
    assert all(g["error_drop_per_doubling"] == g["error_drop"] / math.log2(g["flops_ratio"])
               for g in gains.values())  # fmt: skip
    assert main(["plot", SPEC, "--quick", *workdir]) == 0
    assert "resnet_rs_scaling.png" in capsys.readouterr().out
    assert (tmp_path / "plots" / "resnet_rs_scaling.png").exists()
