"""Checkpoint faults injected on purpose, with real processes and files (issue 15, §3).

- kill -9 while an asynchronous save is in flight: the next run restores the previous
  complete step and keeps the partial one aside (``<step>.partial``), nothing deleted;
- a full disk during a save (a small tmpfs, mounted in a private mount namespace): one
  clear error line naming the directory and the space, the earlier checkpoint intact,
  and the run resumes once space is freed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from archjax.checkpoint import Checkpointer, CheckpointWarning
from tests.checkpoint import faults_worker

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "faults_worker.py")
ENV = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


def test_kill_9_during_async_save_restores_previous_step_and_keeps_the_partial(tmp_path):
    directory = str(tmp_path / "checkpoints")
    proc = subprocess.run(
        [sys.executable, WORKER, "kill", directory],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    # Killed mid-save: step 2 is Orbax's temporary directory, never renamed.
    assert sorted(os.listdir(directory)) == ["1", "2" + faults_worker.TMP], proc.stderr[-2000:]
    partial_files = sorted(os.listdir(os.path.join(directory, "2" + faults_worker.TMP)))

    with pytest.warns(
        CheckpointWarning, match=r"2\.orbax-checkpoint-tmp never finished.*2\.partial"
    ):
        ckpt = Checkpointer(directory)
    with ckpt:
        assert ckpt.all_steps() == [1]
        want = faults_worker.state(1)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), want)
        restored, _ = ckpt.restore(target)
        np.testing.assert_array_equal(restored["w"], want["w"])
        assert int(restored["step"]) == 1
        ckpt.save(2, want, force=True)  # the re-run saves step 2 again: the partial stays
    assert sorted(os.listdir(directory)) == ["1", "2", "2.partial"]
    assert sorted(os.listdir(os.path.join(directory, "2.partial"))) == partial_files


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = (
        "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d; r=$?; rmdir $d; exit $r"
    )
    return (
        subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a small tmpfs (unshare -rm)")
def test_disk_full_during_save_is_one_clear_error_and_the_run_resumes(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    # An 8 MiB filesystem in a private mount namespace: gone when the worker exits.
    script = (
        f'mount -t tmpfs -o size=8m tmpfs "{mount}" && '
        f'exec "{sys.executable}" "{WORKER}" disk_full "{mount}"'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    error = report["error"]
    assert "\n" not in error
    assert f"No space left on the device of {mount}/checkpoints to save step 2" in error
    assert "MiB free, the state takes 3.8 MiB" in error and "Checkpoints [1] are intact" in error
    assert report["after_error"] == ["1", "2" + faults_worker.TMP]
    assert any("moved it to" in w and "2.partial" in w for w in report["warnings"])
    assert report["restored_step"] == 1 and report["restored_equal"]
    assert report["resumed"] == ["1", "2", "2.partial"]
