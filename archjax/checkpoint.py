"""Orbax checkpoints of a train state (and of the data iterator that feeds it).

A thin wrapper over ``orbax.checkpoint.CheckpointManager`` that fixes the layout
of an archjax checkpoint::

    <directory>/<step>/state/   the TrainState pytree (StandardSave, sharded arrays)
    <directory>/<step>/data/    the data iterator state (JSON), if given

Orbax writes each step into a temporary directory and renames it when complete,
so an interrupted save never becomes the "latest" checkpoint. Restores go into
an abstract target (``jax.eval_shape`` + shardings), so each device reads only
its own shards and a shape or dtype mismatch is caught before training resumes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint could not be restored (corrupt, incomplete or a different model)."""


class Checkpointer:
    """Saves every ``save_interval_steps`` steps, keeps the last ``max_to_keep``.

    Args:
      directory: where the step directories live (created if missing).
      save_interval_steps: ``save`` writes only on multiples of this (unless forced).
      max_to_keep: older checkpoints beyond this many are deleted.
      async_save: write in a background thread; call :meth:`wait_until_finished`
        (or :meth:`close`) before the process exits.

    Example:
      >>> ckpt = Checkpointer(workdir / "checkpoints", save_interval_steps=100)
      >>> ckpt.save(step, state, data_state=train_iter.get_state())
      >>> state, data_state = ckpt.restore(abstract_state)     # latest step
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_interval_steps: int = 1,
        max_to_keep: int | None = 3,
        async_save: bool = True,
    ):
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}.")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_interval_steps,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            # Handlers named up front so that a fresh manager (a resumed run) can
            # read item metadata before the first restore.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The highest complete checkpoint's step, or ``None`` if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, state: Any, *, data_state: dict | None = None, force: bool = False
    ) -> bool:
        """Saves ``state`` at ``step`` if the interval says so (or ``force``).

        Args:
          step: the step number (usually ``int(state.step)``).
          state: the pytree to save (a :class:`archjax.train.TrainState`).
          data_state: JSON-serialisable state of the data iterator.
          force: save even off the interval.

        Returns:
          Whether a save was started. A step that already exists is never
          overwritten: it is skipped and ``False`` is returned.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, target: Any, *, step: int | None = None) -> tuple[Any, dict | None]:
        """Restores the state at ``step`` (default: the latest) into ``target``'s structure.

        Args:
          target: an abstract state (``jax.ShapeDtypeStruct`` leaves, with shardings
            for a mesh), e.g. from :func:`archjax.train.abstract_train_state`.
          step: which step; ``None`` means the latest.

        Returns:
          ``(state, data_state)``; ``data_state`` is ``None`` if none was saved.

        Raises:
          FileNotFoundError: there is no checkpoint (at ``step``).
          CheckpointError: the checkpoint does not match ``target`` (the message
            names the first differing leaf) or cannot be read.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"No checkpoint for step {step} in {self.directory}; have {self.all_steps()}."
            )
        path = os.path.join(self.directory, str(step))
        saved = self._saved_tree(step, path)
        _check_matches(saved, target, path)
        items = {"state": ocp.args.StandardRestore(target)}
        has_data = os.path.isdir(os.path.join(path, "data"))
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(f"Could not read checkpoint {path}: {e}") from e
        return restored["state"], (restored["data"] if has_data else None)

    def _saved_tree(self, step: int, path: str) -> Any:
        """The saved state's metadata tree (shapes and dtypes), or a clear error."""
        try:
            meta = self._manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(f"Checkpoint {path} is unreadable or corrupt: {e}") from e
        if meta is None:
            raise CheckpointError(f"Checkpoint {path} has no 'state' item (corrupt or foreign).")
        return meta

    def wait_until_finished(self) -> None:
        """Blocks until background saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_matches(saved: Any, target: Any, path: str) -> None:
    """Raises CheckpointError naming the first leaf whose structure/shape/dtype differs."""
    saved_keys = _leaves_by_path(saved)
    target_keys = _leaves_by_path(target)
    missing = sorted(set(target_keys) - set(saved_keys))
    extra = sorted(set(saved_keys) - set(target_keys))
    if missing or extra:
        raise CheckpointError(
            f"Checkpoint {path} holds a different state tree than the target: "
            f"missing from checkpoint {missing[:5]}, unexpected in checkpoint {extra[:5]}. "
            "Was it written by a different model or optimizer?"
        )
    for key, want in target_keys.items():
        have = saved_keys[key]
        if tuple(have.shape) != tuple(want.shape) or np.dtype(have.dtype) != np.dtype(want.dtype):
            raise CheckpointError(
                f"Checkpoint {path}: leaf {key} has shape {tuple(have.shape)} dtype {have.dtype}, "
                f"but the target expects shape {tuple(want.shape)} dtype {want.dtype}. "
                "Was it written by a different model configuration?"
            )


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    """Leaves keyed by a '/'-joined path that is the same for dataclasses and saved dicts."""
    return {
        "/".join(_key_name(k) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
