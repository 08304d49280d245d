"""Which directories archjax writes into, and setting a bad checkpoint step aside."""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

# Names orbax writes directly under a checkpoint directory (besides step directories).
_OWN_FILES = ("_CHECKPOINT_METADATA", "_ROOT_METADATA")
_CORRUPT_SUFFIX = ".corrupt"


def claim_directory(path: str | os.PathLike, *, marker: str = ".archjax") -> str:
    """Creates ``path`` (or accepts it if empty or archjax's own) and marks it as archjax's.

    archjax never writes into a non-empty directory that it did not create: a
    typo in ``--workdir`` must not scatter files into someone's home directory
    or an unrelated run. A directory counts as archjax's if it holds ``marker``
    (written here) or a ``config.json`` (workdirs made before the marker).

    Args:
      path: the directory to write into.
      marker: name of the (empty) file that marks the directory.

    Returns:
      The absolute path.

    Raises:
      ValueError: ``path`` is a non-empty directory without the marker, or a file.

    Example:
      >>> workdir = claim_directory("runs/resnet20")
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path} exists and is not a directory.")
    entries = os.listdir(path) if os.path.isdir(path) else []
    if entries and marker not in entries and "config.json" not in entries:
        raise ValueError(
            f"Refusing to write into {path}: it is not empty ({sorted(entries)[:5]}) and is "
            f"not an archjax directory (no {marker} file). Choose an empty or new directory."
        )
    if jax.process_index() == 0:
        os.makedirs(path, exist_ok=True)
        if marker not in entries:
            open(os.path.join(path, marker), "a").close()
    return path


def check_checkpoint_directory(path: str) -> None:
    """Refuses a non-empty directory that holds anything but checkpoints."""
    if not os.path.isdir(path):
        return
    foreign = [
        name
        for name in os.listdir(path)
        if not (
            name.split(".")[0].isdigit() or name in _OWN_FILES or name.startswith(".")  # our marker
        )
    ]
    if foreign:
        raise ValueError(
            f"Refusing to write checkpoints into {path}: it holds files that are not "
            f"checkpoints ({sorted(foreign)[:5]}). Use an empty or new directory."
        )


def set_aside(directory: str, step: int) -> str:
    """Renames a bad step directory to ``<step>.corrupt[.N]`` (never deletes); returns the path.

    Every process must call this (process 0 renames, the others wait for it).
    """
    src = os.path.join(directory, str(step))
    dst = src + _CORRUPT_SUFFIX
    n = 1
    while os.path.exists(dst):
        dst, n = f"{src}{_CORRUPT_SUFFIX}.{n}", n + 1
    if jax.process_index() == 0:
        os.rename(src, dst)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"archjax_set_aside_{step}")
    return dst
