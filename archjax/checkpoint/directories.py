"""Which directories archjax writes into, and setting a bad checkpoint step aside."""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

# Names orbax writes directly under a checkpoint directory (besides step directories).
_OWN_FILES = ("_CHECKPOINT_METADATA", "_ROOT_METADATA")
_CORRUPT_SUFFIX = ".corrupt"
_PARTIAL_SUFFIX = ".partial"
# Orbax's name for a step directory being written (orbax.checkpoint's TMP_DIR_SUFFIX).
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


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
    dst = _rename_aside(os.path.join(directory, str(step)), str(step) + _CORRUPT_SUFFIX)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"archjax_set_aside_{step}")
    return dst


def set_aside_unfinished(directory: str) -> dict[str, str]:
    """Renames Orbax's unfinished saves ``<step>.orbax-checkpoint-tmp`` to ``<step>.partial[.N]``.

    A save cut short (kill -9, a full disk) leaves its temporary directory; Orbax
    would delete it when that step is saved again. Every process must call this
    (process 0 renames, the others wait for it).

    Returns:
      ``{old path: new path}`` of the directories moved.
    """
    names = os.listdir(directory) if os.path.isdir(directory) else []
    unfinished = sorted(
        n for n in names if n.endswith(_TMP_SUFFIX) and n[: -len(_TMP_SUFFIX)].isdigit()
    )
    moved = {}
    for name in unfinished:
        step = name[: -len(_TMP_SUFFIX)]
        src = os.path.join(directory, name)
        moved[src] = _rename_aside(src, step + _PARTIAL_SUFFIX)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("archjax_set_aside_unfinished")
    return moved


def _rename_aside(src: str, name: str) -> str:
    """Process 0 renames ``src`` to ``name`` (``.N`` appended if taken) next to it."""
    dst = os.path.join(os.path.dirname(src), name)
    n = 1
    while os.path.exists(dst):
        dst, n = os.path.join(os.path.dirname(src), f"{name}.{n}"), n + 1
    if jax.process_index() == 0:
        os.rename(src, dst)
    return dst
