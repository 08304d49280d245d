"""experiments/studies/optim_8bit.py: the quick pipeline (store, fit keys, plot)."""

import json
import os

from archjax.studies.__main__ import main

from .conftest import REPO

STUDY = "experiments/studies/optim_8bit.py"


def test_quick_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = os.path.join(REPO, STUDY)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", spec, "--quick", *workdir, "--no-progress"]) == 0
    assert "2/2 configs finished; trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", spec, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    assert sorted(result) == ["bits32", "bits8"]
    assert result["bits8"]["seeds"] == [0] and len(result["bits8"]["minus_fp32_per_seed"]) == 1
    assert all(0 <= a <= 1 for e in result.values() for a in e["test_accuracy"])
    assert main(["plot", spec, "--quick", *workdir]) == 0
    assert (tmp_path / "plots" / "accuracy_vs_bits.png").exists()
