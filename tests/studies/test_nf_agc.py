"""The NF/BN/AGC study's quick mode: training trials, signal-propagation probes, fit, plots."""

import json

from archjax.studies.__main__ import main

from .conftest import REPO

SPEC = f"{REPO}/experiments/studies/nf_agc.py"


def test_quick_study_runs_fits_and_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", SPEC, "--quick", "--no-progress", *workdir]) == 0
    assert "5/5 configs finished; trials COMPLETE 5" in capsys.readouterr().out
    assert main(["fit", SPEC, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    table = {(e["kind"], e["batch_size"]): e for e in result["table"]}
    assert set(table) == {("bn", 512), ("nf_agc", 512)}
    # The learning rate is scaled linearly from 0.4 at batch 256.
    assert all(abs(e["learning_rate"] - 0.8) < 1e-12 for e in table.values())
    assert all(0 <= e["test_error"] <= 1 for e in table.values())
    spp = result["signal_propagation"]
    assert set(spp) == {"bn", "nf", "plain"} and all(s["blocks"] == 2 for s in spp.values())
    assert main(["plot", SPEC, "--quick", *workdir]) == 0
    out = capsys.readouterr().out
    assert "nf_agc_batch.png" in out and "nf_agc_signal_propagation.png" in out
