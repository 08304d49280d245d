"""Slice-wide mode: 2 local processes x 4 CPU devices run each trial as one program."""

import os
import socket
import subprocess
import sys

from archjax import studies
from archjax.studies import runner

from .conftest import REPO, TOY, run_counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slice_workers(workdir, url):
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", ARCHJAX_STORAGE=url,
                   XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i))  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "archjax.studies", "work", f"{TOY}:slice_wide", "--slice",
             "--workdir", str(workdir), "--no-progress", "--poll", "0.2"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]


def test_slice_wide_trials_are_recorded_once_by_process_0(tmp_path):
    """Acceptance 5: 4 trials, each run by both processes and recorded once, no hang."""
    workdir = tmp_path / "slice"
    url = f"sqlite:///{workdir}/study.db"
    study = studies.load(f"{TOY}:slice_wide")
    studies.init(study, studies.open_storage(url))
    results = _slice_workers(workdir, url)
    for code, out in results:
        assert code == 0, out[-3000:]
    assert (
        "this worker ran 4 trials" in results[0][1] and "this worker ran 4 trials" in results[1][1]
    )
    rows = studies.rows(runner.load(study, studies.open_storage(url)))
    assert sorted((r["state"], r["x"]) for r in rows) == [("COMPLETE", x) for x in (1, 2, 3, 4)]
    for r in rows:  # 4 devices x x on process 0 + 4 devices x 2x on process 1
        assert r["loss"] == 12 * r["x"] and r["process"] == 0 and r["processes"] == 2
    assert sorted(run_counts(workdir).values()) == [2] * 4  # each trial ran on both processes


def test_slice_wide_store_error_ends_every_process(tmp_path):
    """Process 0 cannot open its study: it tells process 1, and neither hangs."""
    results = _slice_workers(tmp_path / "missing", f"sqlite:///{tmp_path}/empty.db")
    assert [code for code, _ in results] == [2, 2], results
    assert "No study 'slice_wide'" in results[0][1]
    assert "Process 0 stopped the study" in results[1][1]
