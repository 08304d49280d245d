"""The ZeroQ study's quick mode runs in-process: store, fit keys, plot files (not the claim)."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments/studies/zeroq.py")


def test_zeroq_quick(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "trials COMPLETE 1" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    for calib in ("real", "distilled", "noise"):
        assert 0.0 <= result[f"w4a4/{calib}"] <= 1.0
        assert f"drop/w4a4/{calib}" in result and f"bn_gap/{calib}" in result
    # The distilled batch matches the BatchNorm statistics better than noise does.
    assert result["bn_gap/distilled"] < result["bn_gap/noise"]
    (layer,) = result["layers_by_drop"]
    assert layer["layer"] == "stem_conv" and layer["params"] > 0
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "zeroq_ptq.png").exists()
    assert (tmp_path / "plots" / "zeroq_layers.png").exists()
