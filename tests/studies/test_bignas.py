"""The BigNAS study: its quick mode end to end (supernet, shared and stand-alone children)."""

import json
import os

import pytest

from archjax.studies.__main__ import main
from experiments.studies import bignas

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


def test_fit_compares_each_supernet_length_with_the_same_standalone_children(tmp_path):
    def row(mode, child, acc, **extra):
        return {"state": "COMPLETE", "mode": mode, "child": child, "accuracy": acc,
                "macs": 10 * (child + 1), **extra}  # fmt: skip

    rows = [row("standalone", c, 0.9 + 0.01 * c) for c in range(3)]
    rows += [row("shared", c, 0.5 + 0.1 * c) for c in range(3)]  # the fixed supernet length
    rows += [row("shared", c, 0.9, supernet_steps=bignas.LONG_SUPERNET_STEPS) for c in range(3)]
    result = bignas.fit(rows)
    assert result["children"] == 3 and result["failed"] == 0
    assert result["mean_gap"] == pytest.approx(0.31)  # top level: the study's own supernet
    by = result["by_supernet_steps"]
    assert set(by) == {str(bignas.SUPERNET_STEPS), str(bignas.LONG_SUPERNET_STEPS)}
    assert by[str(bignas.LONG_SUPERNET_STEPS)]["mean_gap"] == pytest.approx(0.01)
    assert by[str(bignas.SUPERNET_STEPS)]["mean_gap"] == pytest.approx(0.31)
    (path,) = bignas.plot(rows, {}, str(tmp_path))  # one marker per supernet length
    assert os.path.getsize(path) > 0
