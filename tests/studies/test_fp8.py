"""The FP8 study's quick mode runs in-process: store, fit keys, plot files (not the claim)."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments/studies/fp8.py")


def test_fp8_quick(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "trials COMPLETE 1" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert set(result) == {"vit"}  # the quick mode's one model
    for m in result.values():
        assert m["kurtosis_max"] >= 1.0 and m["max_over_std_max"] > 0  # kurtosis >= 1 always
        for key in ("ptq/e4m3", "ptq/int8", "qat/e4m3", "qat/int8"):
            assert 0.0 <= m[key] <= 1.0
        assert m["ptq_best_fp8"] == "e4m3" and "qat_best_fp8_minus_int8" in m
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "fp8_ptq.png").exists()
    assert (tmp_path / "plots" / "fp8_qat.png").exists()
