"""The runner with real worker processes: failures, kills, re-runs, added grid points."""

import os
import signal
import time

import optuna

from archjax import studies
from archjax.studies import runner
from archjax.studies.__main__ import main

from .conftest import TOY, cli, run_counts, worker


def _open(url):
    return studies.open_storage(url, heartbeat_interval=1, grace_period=2)


def test_four_workers_one_failing_config(storage_url, tmp_path):
    """Acceptance 1: 23 complete, 1 failed with its traceback, no config run twice."""
    workdir = tmp_path / "grid24"
    cli("run", f"{TOY}:grid24", "--workdir", str(workdir), "--workers", "4", "--poll", "0.2",
        storage=storage_url)  # fmt: skip
    study = studies.load(f"{TOY}:grid24")
    rows = studies.rows(runner.load(study, _open(storage_url)))
    states = [r["state"] for r in rows]
    assert len(rows) == 24 and states.count("COMPLETE") == 23 and states.count("FAIL") == 1
    (failed,) = [r for r in rows if r["state"] == "FAIL"]
    assert failed["x"] == 13 and "Traceback" in failed["error"]
    assert "ValueError: x = 13 is unlucky" in failed["error"]
    assert sorted(run_counts(workdir).values()) == [1] * 24  # each config ran exactly once
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert len({r["key"] for r in complete}) == 23
    for r in complete:
        assert r["loss"] == (r["x"] - 3) ** 2 + r["seed"] / 100 and r["wall_time"] > 0


def test_kill_resume_rerun_and_retry_failed(tmp_path, capsys):
    """Acceptance 2: a kill -9'd trial resumes from its checkpoint and completes once."""
    workdir = tmp_path / "resumable"
    url = f"sqlite:///{workdir}/study.db"
    spec = f"{TOY}:resumable"
    args = (spec, "--workdir", str(workdir), "--heartbeat", "1", "--grace", "2", "--poll", "0.2")
    assert main(["init", *args]) == 0
    victim = worker(*args)  # a real process, killed with SIGKILL mid-trial
    first = studies.config_key({"x": 1})
    checkpoint = workdir / "trials" / first / "checkpoint.json"
    deadline = time.time() + 90
    while not (checkpoint.exists() and '"step": 3' in checkpoint.read_text()):
        assert time.time() < deadline and victim.poll() is None, victim.communicate()[0]
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    assert main(["work", *args, "--no-progress"]) == 0  # waits out the grace period
    study = studies.load(spec)
    opt = runner.load(study, _open(url))
    by_x = {}
    for r in studies.rows(opt):
        by_x.setdefault(r["x"], []).append(r)
    # The killed trial went stale, was re-queued with the same config and resumed.
    assert sorted(r["state"] for r in by_x[1]) == ["COMPLETE", "FAIL"]
    (done,) = [r for r in by_x[1] if r["state"] == "COMPLETE"]
    assert done["resumed_from"] >= 3
    assert [r["state"] for r in by_x[2]] == ["COMPLETE"]
    assert [r["state"] for r in by_x[13]] == ["FAIL"]
    trials_before = len(studies.rows(opt))
    capsys.readouterr()

    assert main(["run", *args, "--no-progress"]) == 0
    assert "0 newly queued" in capsys.readouterr().out
    assert len(studies.rows(opt)) == trials_before  # a finished study runs nothing

    assert main(["run", *args, "--no-progress", "--retry-failed"]) == 0
    assert "1 newly queued" in capsys.readouterr().out
    rows = studies.rows(opt)
    assert len(rows) == trials_before + 1 and rows[-1]["x"] == 13
    counts = run_counts(workdir)
    assert counts[studies.config_key({"x": 13})] == 2 and counts[studies.config_key({"x": 2})] == 1


def test_added_grid_points_run_alone(tmp_path):
    """Acceptance 4 (second half): a study extended with two configs runs only those."""
    workdir = str(tmp_path / "grid24")
    url = f"sqlite:///{workdir}/study.db"
    base, extended = studies.load(f"{TOY}:grid24"), studies.load(f"{TOY}:extended")
    storage = _open(url)
    studies.init(base, storage)
    assert studies.work(base, storage, workdir, show_progress=False) == 24
    assert studies.init(base, storage) == []
    new = studies.init(extended, storage)
    assert new == [
        studies.config_key({"x": 20, "seed": 0}),
        studies.config_key({"x": 21, "seed": 0}),
    ]
    assert studies.work(extended, storage, workdir, show_progress=False) == 2
    assert sorted(run_counts(workdir).values()) == [1] * 26


def test_claims_are_exclusive_and_duplicates_pruned(tmp_path):
    """Two queues never claim one trial; a config queued twice (racing inits) runs once."""
    url = f"sqlite:///{tmp_path}/study.db"
    study = studies.load(f"{TOY}:grid24")
    storage = _open(url)
    studies.init(study, storage)
    opt = runner.load(study, storage)
    opt.enqueue_trial({}, user_attrs={"config": {"x": 1, "seed": 0}, "key": studies.config_key(
        {"x": 1, "seed": 0})})  # fmt: skip
    queues = [runner.Queue(runner.load(study, _open(url))) for _ in range(3)]
    claimed = []
    while True:
        got = [q.claim() for q in queues]
        claimed += [t.number for t in got if t is not None]
        if all(t is None for t in got):
            break
    assert sorted(claimed) == list(range(24))  # each once; the duplicate (24) never
    (dup,) = opt.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert dup.number == 24 and dup.user_attrs["duplicate_of"] == 0


def test_status_and_export(tmp_path, capsys):
    workdir = str(tmp_path / "s")
    spec = f"{TOY}:grid24"
    assert main(["run", spec, "--workdir", workdir, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["status", spec, "--workdir", workdir]) == 0
    status = capsys.readouterr().out
    assert "24/24 configs finished" in status and "COMPLETE 23, FAIL 1" in status
    assert "ValueError: x = 13 is unlucky" in status
    assert main(["export", spec, "--workdir", workdir]) == 0
    with open(os.path.join(workdir, "trials.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("trial,state,key,x,seed,loss") and len(lines) > 24
