"""experiments/studies/quant_pareto.py --quick runs in-process: store, fit keys, plots."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments", "studies", "quant_pareto.py")


def test_quant_pareto_quick(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    points = {p["scheme"]: p for p in result["points"]}
    assert set(points) == {"bf16", "int4"}
    # The cost report: int4 (first/last layers int8) stores fewer bits than bf16.
    assert points["int4"]["weight_bits"] < points["bf16"]["weight_bits"]
    assert all(0 <= p["train_accuracy_mean"] <= 1 for p in points.values())
    assert result["frontier"] and set(result["mean_gap"]) == {"bf16", "int4"}
    assert result["bf16_dominated_by_int4_weight_bits"].endswith("/1")
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "frontier.png").exists()
    assert (tmp_path / "plots" / "curves.png").exists()
