"""experiments/studies/lr_batch.py: the quick pipeline, and a killed run that resumes.

The kill test is acceptance 2 of issue 12 on a real study: a ``run`` process is
SIGKILLed part-way, and the re-run runs only the configs that had not completed. It runs
the study's SGD trials (tests/studies/lr_batch_part.py): the same trial function, fewer
compiled programs.
"""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from archjax import studies
from archjax.studies.__main__ import main

from .conftest import REPO, cli

STUDY = "experiments/studies/lr_batch.py"
PART = "tests/studies/lr_batch_part.py:sgd"


def test_quick_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = os.path.join(REPO, STUDY)
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", spec, "--quick", *workdir, "--no-progress"]) == 0
    assert "33/33 configs finished; trials COMPLETE 33" in capsys.readouterr().out
    assert main(["fit", spec, "--quick", *workdir]) == 0
    with open(tmp_path / "fit.json") as f:
        result = json.load(f)
    for opt in ("sgd", "adam"):
        for kind in ("max_lr", "best_lr"):
            fitted = result[opt][kind]["all"]
            lo, hi = fitted["interval"]
            assert lo <= fitted["slope"] <= hi
        assert [e["batch_size"] for e in result[opt]["per_batch"]] == [16, 64]
    hess = result["hessian"]
    assert [e["batch_size"] for e in hess] == [16]
    assert all(e["lambda_full_trained"] > 0 and e["ratio_init"] > 0 for e in hess)
    assert main(["plot", spec, "--quick", *workdir]) == 0
    for name in ("sgd_max_lr", "sgd_best_lr", "adam_max_lr", "adam_best_lr", "hessian"):
        assert (tmp_path / "plots" / f"{name}.png").exists()


def _trials(db):
    try:
        opt = optuna.load_study(study_name="lr_batch_quick_sgd", storage=f"sqlite:///{db}")
    except KeyError:  # not created yet
        return []
    return opt.get_trials(deepcopy=False)


def test_killed_run_reruns_only_the_missing_trials(tmp_path):
    args = ["run", PART, "--quick", "--workdir", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "archjax.studies", *args], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    db = tmp_path / "study.db"
    deadline = time.time() + 300
    while sum(t.state == TrialState.COMPLETE for t in _trials(db)) < 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.user_attrs["key"], t.datetime_complete)
              for t in _trials(db) if t.state == TrialState.COMPLETE}  # fmt: skip
    all_keys = {studies.config_key(c) for c in studies.load(PART, quick=True).configs}
    assert 3 <= len(before) < len(all_keys)  # killed part-way
    time.sleep(1.5)  # past the grace period below: a trial killed mid-run is stale
    started = time.time()
    out = cli(*args, "--grace", "1").stdout
    assert "0 newly queued" in out  # every config was queued by the killed run
    after = _trials(db)
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["key"] for t in complete) == sorted(all_keys)  # each once
    for t in complete:  # the trials finished before the kill are untouched
        if t.number in before:
            assert (t.user_attrs["key"], t.datetime_complete) == before[t.number]
    rerun = {t.user_attrs["key"] for t in after
             if t.datetime_start and t.datetime_start.timestamp() >= started - 1}  # fmt: skip
    done_before = {key for key, _ in before.values()}
    assert rerun == all_keys - done_before  # only the missing configs ran again
