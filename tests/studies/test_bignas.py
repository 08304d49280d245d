"""The BigNAS study: its quick mode end to end (supernet, shared and stand-alone children)."""

import json
import os

from archjax.studies.__main__ import main

SPEC = "experiments/studies/bignas.py"


def test_quick_study_runs(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", SPEC, "--quick", "--no-progress", *workdir]) == 0
    assert "4/4 configs finished; trials COMPLETE 4" in capsys.readouterr().out
    supernets = [f for f in os.listdir(tmp_path) if f.startswith("supernet_")]
    assert len(supernets) == 1  # trained once, saved for other workers
    assert main(["fit", SPEC, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert result["children"] == 2 and result["failed"] == 0
    tau = result["kendall_tau"]  # None when a side ties (two children, 12 steps)
    assert (tau is None or -1 <= tau <= 1) and -1 <= result["mean_gap"] <= 1
    macs = [c["macs"] for c in result["per_child"]]
    assert macs[0] > macs[1]  # the largest child, then the smallest
    assert main(["plot", SPEC, "--quick", *workdir]) == 0
    assert os.path.exists(tmp_path / "plots" / "bignas_shared_vs_standalone.png")
