"""The loss-vs-compute study's quick mode: store, learning-curve points, fit, plots."""

import json

from archjax.studies.__main__ import main

from .conftest import REPO

SPEC = f"{REPO}/experiments/studies/loss_compute.py"


def test_quick_study_runs_fits_and_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", SPEC, "--quick", "--no-progress", *workdir]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", SPEC, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert result["points"] == 8  # 2 trials x 4 evaluations, each a (compute, loss) point
    assert 1 <= result["frontier_points"] <= result["points"]
    assert result["fitted_on"] == ("frontier" if result["frontier_points"] >= 4 else "all points")
    lo, hi = result["intervals"]["b"]
    assert lo <= hi and len(result["models"]) == 2
    assert [p["compute"] for p in result["frontier"]] == sorted(
        p["compute"] for p in result["frontier"]
    )
    assert main(["plot", SPEC, "--quick", *workdir]) == 0
    out = capsys.readouterr().out
    assert "loss_compute.png" in out and "loss_compute_curves.png" in out
    assert (tmp_path / "plots" / "loss_compute.png").exists()
