"""A process that meets a checkpoint fault (not a test module; see test_faults.py).

python tests/checkpoint/faults_worker.py kill DIRECTORY
    saves step 1, starts an asynchronous save of step 2 and, while it is in
    flight, kills itself with SIGKILL (kill -9).
python tests/checkpoint/faults_worker.py disk_full DIRECTORY
    DIRECTORY is a small filesystem. Saves step 1, fills the disk, fails to save
    step 2, frees the space and resumes as a re-run would (a new Checkpointer):
    restores step 1 and saves step 2. Prints one JSON line of what it saw.
"""

import asyncio
import json
import os
import signal
import sys
import threading
import warnings
from unittest import mock

import jax
import numpy as np
from orbax.checkpoint._src.path import atomicity

from archjax.checkpoint import CheckpointDiskFullError, Checkpointer

TMP = ".orbax-checkpoint-tmp"  # Orbax's name for a step being written


def state(step: int, size: int = 1000) -> dict:
    """Random (incompressible) values that differ by step."""
    return {"w": jax.random.normal(jax.random.key(step), (size, size)), "step": np.int32(step)}


def kill(directory: str) -> None:
    ckpt = Checkpointer(directory, async_save=True)
    ckpt.save(1, state(1), force=True)
    ckpt.wait_until_finished()
    # Hold the save of step 2 at its last move (the rename of the step directory, after
    # every item is written), so that the kill surely lands while it is in flight.
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    held = threading.Event()

    async def hold_the_step(self, *args, **kwargs):
        if os.path.dirname(os.fspath(self.get())) == directory:  # the step, not an item
            held.set()
            await asyncio.sleep(3600)
        return await finalize(self, *args, **kwargs)

    with mock.patch.object(atomicity.AtomicRenameTemporaryPath, "finalize", hold_the_step):
        ckpt.save(2, state(2), force=True)
        assert held.wait(timeout=240), "the save never reached its rename"
        os.kill(os.getpid(), signal.SIGKILL)


def disk_full(directory: str) -> None:
    ckpt_dir = os.path.join(directory, "checkpoints")
    ckpt = Checkpointer(ckpt_dir, async_save=True)
    ckpt.save(1, state(1, size=100), force=True)
    ckpt.wait_until_finished()
    filler = os.path.join(directory, "filler")
    with open(filler, "wb") as f:  # leave 1 MiB free: step 2 needs 4 MB
        f.write(os.urandom(os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize - 2**20))
    report = {}
    try:
        ckpt.save(2, state(2), force=True)
        ckpt.wait_until_finished()
    except CheckpointDiskFullError as e:
        report["error"] = str(e)
    ckpt.close()
    report["after_error"] = sorted(os.listdir(ckpt_dir))
    os.remove(filler)  # the space is freed; the run is started again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = Checkpointer(ckpt_dir, async_save=True)
    report["warnings"] = [str(w.message) for w in caught]
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(1, size=100))
    restored, _ = ckpt.restore(target)
    report["restored_step"] = int(restored["step"])
    report["restored_equal"] = bool(np.array_equal(restored["w"], state(1, size=100)["w"]))
    ckpt.save(2, state(2), force=True)
    ckpt.close()
    report["resumed"] = sorted(os.listdir(ckpt_dir))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    {"kill": kill, "disk_full": disk_full}[sys.argv[1]](sys.argv[2])
