"""What a checkpoint step must pass to be restored; each check raises one kind of error.

- :func:`saved_tree`: the step's state metadata is readable
  (:class:`CorruptCheckpointError` otherwise);
- :func:`check_matches`: it has the target's tree, shapes and dtypes
  (:class:`CheckpointMismatchError`, naming the first differing leaf);
- :func:`check_checksums`: the restored values equal the checksums written with
  them (:class:`CorruptCheckpointError`, naming the leaves).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from archjax.checkpoint.checksums import checksums, leaves_by_path
from archjax.checkpoint.errors import CheckpointMismatchError, CorruptCheckpointError

CHECKSUMS = "checksums.json"


def saved_tree(manager: ocp.CheckpointManager, step: int, path: str) -> Any:
    """The saved state's metadata tree (shapes and dtypes) of ``step``."""
    try:
        meta = manager.item_metadata(step)["state"]
    except Exception as e:  # orbax raises many types for unreadable files
        raise CorruptCheckpointError(f"Checkpoint {path} is unreadable or corrupt: {e}") from e
    if meta is None:
        raise CorruptCheckpointError(f"Checkpoint {path} has no 'state' item (corrupt or foreign).")
    return meta


def check_matches(saved: Any, target: Any, path: str) -> None:
    """Raises naming the first leaf whose presence, shape or dtype differs from ``target``."""
    saved_keys = leaves_by_path(saved)
    target_keys = leaves_by_path(target)
    missing = sorted(set(target_keys) - set(saved_keys))
    extra = sorted(set(saved_keys) - set(target_keys))
    if missing or extra:
        raise CheckpointMismatchError(
            f"Checkpoint {path} holds a different state tree than the target: "
            f"missing from checkpoint {missing[:5]}, unexpected in checkpoint {extra[:5]}. "
            "Was it written by a different model or optimizer?"
        )
    for key, want in target_keys.items():
        have = saved_keys[key]
        if tuple(have.shape) != tuple(want.shape) or np.dtype(have.dtype) != np.dtype(want.dtype):
            raise CheckpointMismatchError(
                f"Checkpoint {path}: leaf {key} has shape {tuple(have.shape)} dtype {have.dtype}, "
                f"but the target expects shape {tuple(want.shape)} dtype {want.dtype}. "
                "Was it written by a different model configuration?"
            )


def older_target(target: Any, saved: Any) -> tuple[Any, Callable[[Any], Any]]:
    """Drops the leafless fields a checkpoint predates (``TrainState.collections``).

    A state dataclass that gained a field after a checkpoint was written (empty
    for that run, so no leaf is missing) is restored as a dict of the fields on
    disk; the returned function puts the new, empty fields back.
    """
    if not dataclasses.is_dataclass(target) or not hasattr(saved, "keys"):
        return target, lambda state: state
    fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
    keys = set(saved.keys())  # orbax's tree metadata: a mapping, but not a Mapping
    new = {k: v for k, v in fields.items() if k not in keys and not jax.tree.leaves(v)}
    if not new:
        return target, lambda state: state
    on_disk = {k: v for k, v in fields.items() if k not in new}
    return on_disk, lambda state: dataclasses.replace(target, **state, **new)


def check_checksums(path: str, state: Any) -> None:
    """Raises if ``state`` (restored from ``path``) differs from the checksums saved with it.

    A step without ``checksums.json`` passes: the process was killed between the
    save and its checksums, and Orbax's rename already vouches for completeness.
    """
    checksum_file = os.path.join(path, CHECKSUMS)
    if not os.path.exists(checksum_file):
        return
    try:
        with open(checksum_file) as f:
            want = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"Checkpoint {path}: unreadable {CHECKSUMS}: {e}") from e
    have = checksums(state)
    bad = sorted(k for k in want if have.get(k) != want[k])
    if bad:
        raise CorruptCheckpointError(
            f"Checkpoint {path}: {len(bad)} leaf/leaves differ from the checksums "
            f"written with them, e.g. {bad[:3]} (the files changed after saving)."
        )
