"""The zero-cost proxies study's quick mode runs in-process: store, fit keys, plot files.

Its ground truth is the RegNet study's store; here a stand-in store of that study's
quick configs with made-up accuracies (the pipeline is tested, not the claim).
"""

import dataclasses
import json
import os

import pytest

from archjax import studies
from archjax.studies.__main__ import main
from experiments.studies import proxies, regnet_space

from .conftest import REPO

STUDY = os.path.join(REPO, "experiments/studies/proxies.py")


def _made_up_accuracy(config, trial):
    accuracy = 0.5 + (len(str(config)) % 7) / 20
    return {"test_accuracy": accuracy, "test_loss": 1 - accuracy}  # test_loss: its objective


def test_proxies_quick(tmp_path, capsys, monkeypatch):
    truth = str(tmp_path / "regnet")
    stand_in = dataclasses.replace(
        regnet_space.define(quick=True), trial=_made_up_accuracy, check=None, setup=None
    )
    storage = studies.open_storage(studies.sqlite_url(truth))
    studies.init(stand_in, storage)
    studies.work(stand_in, storage, truth, show_progress=False)
    monkeypatch.setenv(proxies.ENV_GROUND_TRUTH, truth)

    workdir = ["--workdir", str(tmp_path / "proxies")]
    assert main(["run", STUDY, "--quick", "--no-progress", *workdir]) == 0
    assert "trials COMPLETE 2" in capsys.readouterr().out
    assert main(["fit", STUDY, "--quick", *workdir]) == 0
    with open(tmp_path / "proxies" / "fit.json") as f:
        result = json.load(f)
    assert result["n"] == 2 and result["failed"] == 0
    for name in proxies.SCORES:
        assert set(result[name]) == {"spearman", "ci95", "p_beats_flops"}
    assert main(["plot", STUDY, "--quick", *workdir]) == 0
    assert (tmp_path / "proxies" / "plots" / "proxies_spearman.png").exists()
    assert (tmp_path / "proxies" / "plots" / "proxies_scatter.png").exists()


def test_missing_ground_truth_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv(proxies.ENV_GROUND_TRUTH, str(tmp_path / "nowhere"))
    with pytest.raises(studies.StudyError, match="No ground truth at") as err:
        proxies.ground_truth(quick=True)
    assert "\n" not in str(err.value)
