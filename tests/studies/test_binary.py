"""The binary-network study's quick mode runs in-process: store, fit keys, plot (not the claim)."""

import json
import os

import pytest

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments/studies/binary.py")


def test_binary_quick(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "trials COMPLETE 4" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert set(result) >= {"float", "bwn/reste", "xnor/clipped", "xnor/reste"}
    assert isinstance(result["order_float>bwn>xnor"], bool)
    # 1-bit weights against 32-bit ones, from the cost report; the float scales cost a little.
    assert result["memory_saving"] == pytest.approx(32.0)
    assert 1.0 < result["memory_saving_with_scales"] < 32.0
    assert result["model_bytes"]["binary"] < result["model_bytes"]["float"]
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "binary_accuracy.png").exists()
