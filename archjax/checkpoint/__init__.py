"""Orbax checkpoints of a train state (and of the data iterator that feeds it).

A thin wrapper over ``orbax.checkpoint.CheckpointManager`` that fixes the layout
of an archjax checkpoint::

    <directory>/<step>/state/   the TrainState pytree (StandardSave, sharded arrays)
    <directory>/<step>/data/    the data iterator state (JSON), if given
    <directory>/<step>/meta/    config and metrics (JSON)
    <directory>/<step>/checksums.json   a checksum of every leaf, added after the step
                                is complete (computed while the save runs)

Orbax writes each step into a temporary directory and renames it when complete,
so an interrupted save never becomes the "latest" checkpoint. Restores go into
an abstract target (``jax.eval_shape`` + shardings, possibly of another mesh or
device count), so each device reads only its own shards and a shape or dtype
mismatch is caught before training resumes. The per-leaf checksums catch a
checkpoint whose bytes changed after it was written; ``restore()`` of the latest
step then falls back to the previous good one, with a warning naming the bad
step, and moves the bad one aside (``<step>.corrupt``) rather than deleting it.
A save that never finished (the process was killed, the disk was full) leaves
Orbax's ``<step>.orbax-checkpoint-tmp``; the next :class:`Checkpointer` moves it to
``<step>.partial`` with a warning, before Orbax would delete it on saving that step again.

The parts, one concept each:

- :mod:`~archjax.checkpoint.manager`: :class:`Checkpointer` (save, restore, retention);
- :mod:`~archjax.checkpoint.checks`: what a step must pass to be restored (same
  tree, shapes and dtypes as the target; readable; values equal to their checksums);
- :mod:`~archjax.checkpoint.checksums`: the sharding-independent per-leaf checksums;
- :mod:`~archjax.checkpoint.directories`: which directories archjax writes into,
  and setting a bad step aside;
- :mod:`~archjax.checkpoint.errors`: the exceptions. A restore check raises
  :class:`CorruptCheckpointError` (the files are bad: fall back to an older step)
  or :class:`CheckpointMismatchError` (a different model: the caller's error);
  a save that runs out of disk space raises :class:`CheckpointDiskFullError`, one
  line with the directory, the free and the needed space. All are
  :class:`CheckpointError` s.
"""

from archjax.checkpoint.checksums import checksums
from archjax.checkpoint.directories import claim_directory
from archjax.checkpoint.errors import (
    CheckpointDiskFullError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWarning,
    CorruptCheckpointError,
)
from archjax.checkpoint.manager import Checkpointer

__all__ = [
    "CheckpointDiskFullError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWarning",
    "Checkpointer",
    "CorruptCheckpointError",
    "checksums",
    "claim_directory",
]
