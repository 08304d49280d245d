"""The Single-Path NAS study's quick mode runs in-process: store, fit keys, plot files."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments/studies/single_path.py")


def test_single_path_quick(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "trials COMPLETE 1" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    (seed,) = result["per_seed"]
    assert result["seeds"] == 1 and result["failed"] == 0
    assert 0.0 <= seed["accuracy"] <= 1.0 and seed["macs"] > 0
    assert len(seed["kernels"]) == len(seed["expansions"]) == 3
    assert seed["random_n"] == result["random_nets"] == 1
    assert seed["max_macs_gap"] <= 0.25  # the random net's MACs are within the tolerance
    assert "diff_searched_minus_random" in result and len(result["diff_ci95"]) == 2
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "single_path.png").exists()
    assert (tmp_path / "plots" / "search_macs.png").exists()
