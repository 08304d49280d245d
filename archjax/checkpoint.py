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
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# Names orbax and archjax write directly under a checkpoint directory.
_TMP_MARK = ".orbax-checkpoint-tmp"
_CORRUPT_SUFFIX = ".corrupt"
_OWN_FILES = ("_CHECKPOINT_METADATA", "_ROOT_METADATA")
_CHECKSUMS = "checksums.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be restored (corrupt, incomplete or a different model)."""


class CheckpointWarning(UserWarning):
    """A bad checkpoint was skipped in favour of an older one."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """A position-sensitive uint32 hash of a leaf's bits; exact, so sharding-independent."""
    if x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize in (1, 2):
        unsigned = jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    else:  # 8-byte leaves (x64 mode): two words each
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bits = bits.reshape(-1)
    i = jnp.arange(bits.size, dtype=jnp.uint32)
    # Integer sums wrap modulo 2**32 in any order: the same on any mesh.
    return jnp.sum((bits ^ (i * jnp.uint32(0x9E3779B9))) * (2 * i + 1), dtype=jnp.uint32)


@jax.jit
def _checksums_jit(tree: Any) -> Any:
    return jax.tree.map(_leaf_checksum, tree)


def checksums(tree: Any) -> dict[str, int]:
    """Per-leaf checksums of a (possibly sharded, multi-process) pytree of arrays.

    Args:
      tree: arrays, on any mesh; every process must call this (it is one jitted
        global computation).

    Returns:
      ``{leaf path: uint32 checksum}``, equal for equal values whatever the sharding.

    Example:
      >>> checksums({"w": jnp.ones(3)})
      {'w': 2496349059}
    """
    return _resolve(_checksums_jit(tree))


def _resolve(sums: Any) -> dict[str, int]:
    """Device checksums (maybe still being computed) -> ``{path: int}`` (blocks)."""
    return {key: int(np.asarray(v.addressable_data(0))) for key, v in _leaves_by_path(sums).items()}


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


def _check_checkpoint_directory(path: str) -> None:
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


class Checkpointer:
    """Saves every ``save_interval_steps`` steps; keeps the last N and the best M.

    Args:
      directory: where the step directories live (created if missing; refused if
        it holds anything other than checkpoints).
      save_interval_steps: ``save`` writes only on multiples of this (unless forced).
      max_to_keep: the last this many checkpoints are kept (``None``: all).
      async_save: write in a background thread; call :meth:`wait_until_finished`
        (or :meth:`close`) before the process exits. The train loop is blocked
        only while device arrays are copied to host memory.
      best_metric: a key of the ``metrics`` given to :meth:`save`; with
        ``keep_best`` the best this many checkpoints by it are kept as well.
      best_mode: ``"max"`` (accuracy) or ``"min"`` (loss).
      keep_best: how many best-by-metric checkpoints to keep besides the last ones.

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
        best_metric: str | None = None,
        best_mode: str = "max",
        keep_best: int = 0,
    ):
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}.")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}.")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
        if keep_best < 0 or (keep_best and not best_metric):
            raise ValueError(
                f"keep_best={keep_best} needs keep_best >= 0 and a best_metric "
                f"(got best_metric={best_metric!r})."
            )
        self.directory = os.path.abspath(os.fspath(directory))
        _check_checkpoint_directory(self.directory)
        self.best_metric = best_metric
        # (step, device checksums) of saves whose checksums.json is not written yet.
        self._pending: list[tuple[int, Any]] = []
        policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        if keep_best:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=best_mode == "min",  # BestN keeps the end of the sorted list
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_interval_steps,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
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
                "meta": ocp.JsonCheckpointHandler(),
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
        self,
        step: int,
        state: Any,
        *,
        data_state: dict | None = None,
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` at ``step`` if the interval says so (or ``force``).

        Every process must call this (the arrays are written by the processes
        that hold them); JSON items are written by process 0. The data iterator
        state must be the same on every process (archjax's grain iterator state
        is a batch count, so it is).

        Args:
          step: the step number (usually ``int(state.step)``).
          state: the pytree to save (a :class:`archjax.train.TrainState`).
          data_state: JSON-serialisable state of the data iterator.
          config: the run's config (JSON-serialisable), stored with the state.
          metrics: scalars for best-by-metric retention (e.g. test accuracy).
          force: save even off the interval.

        Returns:
          Whether a save was started. A step that already exists is never
          overwritten: it is skipped and ``False`` is returned.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        if not (force or self._manager.should_save(step)):
            return False
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        self._write_checksums()  # of the previous save, long finished by now
        meta = {"config": config, "metrics": metrics}
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        if self.best_metric and metrics is not None and self.best_metric not in metrics:
            raise ValueError(f"metrics {sorted(metrics)} lack best_metric {self.best_metric!r}.")
        started = self._manager.save(
            step, args=ocp.args.Composite(**items), metrics=metrics, force=force
        )
        if started:
            # Dispatched after Orbax's copy to host (on one device queue the copy would
            # wait for the hash) and not awaited: it runs while Orbax writes.
            self._pending.append((step, _checksums_jit(state)))
        return started

    def _write_checksums(self) -> None:
        """Writes ``<step>/checksums.json`` for finished saves (atomically, process 0)."""
        if not self._pending:
            return
        self._manager.wait_until_finished()
        for step, sums in self._pending:
            values = _resolve(sums)
            path = os.path.join(self.directory, str(step))
            if jax.process_index() == 0 and os.path.isdir(path):  # not deleted meanwhile
                tmp = os.path.join(path, f".checksums.json.tmp{os.getpid()}")
                with open(tmp, "w") as f:
                    json.dump(values, f)
                os.replace(tmp, os.path.join(path, _CHECKSUMS))
        self._pending = []

    def restore(self, target: Any, *, step: int | None = None) -> tuple[Any, dict | None]:
        """Restores the state at ``step`` (default: the latest good one) into ``target``.

        With ``step=None`` a latest checkpoint that cannot be read, or whose
        values do not match their checksums, is reported with a
        :class:`CheckpointWarning` naming its step, moved aside to
        ``<step>.corrupt`` (never deleted) and the previous one is tried.

        Args:
          target: an abstract state (``jax.ShapeDtypeStruct`` leaves, with shardings
            for a mesh), e.g. from :func:`archjax.train.abstract_train_state`. The
            mesh may differ from the one that saved (another device count or
            strategy): each device reads its own part of the new layout.
          step: which step; ``None`` means the latest good one.

        Returns:
          ``(state, data_state)``; ``data_state`` is ``None`` if none was saved.

        Raises:
          FileNotFoundError: there is no checkpoint (at ``step``).
          CheckpointError: the checkpoint does not match ``target`` (the message
            names the first differing leaf) or cannot be read; with ``step=None``,
            when no checkpoint at all can be read.
        """
        if step is not None:
            if step not in self._manager.all_steps():
                raise FileNotFoundError(
                    f"No checkpoint for step {step} in {self.directory}; have {self.all_steps()}."
                )
            return self._restore_step(target, step)
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        errors = []
        for bad in reversed(steps):
            try:
                return self._restore_step(target, bad, corruption_only=True)
            except _Corrupt as e:
                reason = str(e) if len(str(e)) < 300 else str(e)[:300] + "..."
                errors.append(f"step {bad}: {reason}")
                older = [s for s in steps if s < bad]
                moved = self._set_aside(bad)
                warnings.warn(
                    f"Checkpoint at step {bad} in {self.directory} is corrupt or incomplete "
                    f"({reason}); moved it to {moved} (not deleted) and "
                    + (f"trying step {older[-1]}." if older else "no older checkpoint is left."),
                    CheckpointWarning,
                    stacklevel=2,
                )
        raise CheckpointError(f"No readable checkpoint in {self.directory}: {'; '.join(errors)}")

    def _set_aside(self, step: int) -> str:
        """Renames a bad step directory to ``<step>.corrupt[.N]``; returns the new path."""
        src = os.path.join(self.directory, str(step))
        dst = src + _CORRUPT_SUFFIX
        n = 1
        while os.path.exists(dst):
            dst, n = f"{src}{_CORRUPT_SUFFIX}.{n}", n + 1
        if jax.process_index() == 0:
            os.rename(src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"archjax_set_aside_{step}")
        self._manager.reload()
        return dst

    def _restore_step(
        self, target: Any, step: int, *, corruption_only: bool = False
    ) -> tuple[Any, dict | None]:
        """One step's restore; ``corruption_only`` turns read/checksum errors into ``_Corrupt``."""
        try:
            return self._restore_checked(target, step)
        except CheckpointError as e:
            if corruption_only and not isinstance(e, _Mismatch):
                raise _Corrupt(str(e)) from e
            raise

    def _restore_checked(self, target: Any, step: int) -> tuple[Any, dict | None]:
        path = os.path.join(self.directory, str(step))
        saved = self._saved_tree(step, path)
        _check_matches(saved, target, path)
        items = {"state": ocp.args.StandardRestore(target)}
        has = {k: os.path.isdir(os.path.join(path, k)) for k in ("data", "meta")}
        for key in ("data", "meta"):
            if has[key]:
                items[key] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(f"Could not read checkpoint {path}: {e}") from e
        checksum_file = os.path.join(path, _CHECKSUMS)
        if os.path.exists(checksum_file):  # absent if killed between save and its checksums
            try:
                with open(checksum_file) as f:
                    want = json.load(f)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"Checkpoint {path}: unreadable {_CHECKSUMS}: {e}") from e
            have = checksums(restored["state"])
            bad = sorted(k for k in want if have.get(k) != want[k])
            if bad:
                raise CheckpointError(
                    f"Checkpoint {path}: {len(bad)} leaf/leaves differ from the checksums "
                    f"written with them, e.g. {bad[:3]} (the files changed after saving)."
                )
        return restored["state"], (restored["data"] if has["data"] else None)

    def metadata(self, step: int) -> dict:
        """The ``meta`` item of ``step``: ``config`` and ``metrics`` (or ``{}``)."""
        path = os.path.join(self.directory, str(step), "meta")
        if not os.path.isdir(path):
            return {}
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

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
        """Blocks until background saves (and their checksums) are on disk."""
        self._manager.wait_until_finished()
        self._write_checksums()

    def close(self) -> None:
        """Waits for pending saves and releases resources."""
        self._write_checksums()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Corrupt(CheckpointError):
    """Unreadable files or values that fail their checksums."""


class _Mismatch(CheckpointError):
    """The checkpoint is fine but holds a different state tree (a user error, not corruption)."""


def _check_matches(saved: Any, target: Any, path: str) -> None:
    """Raises CheckpointError naming the first leaf whose structure/shape/dtype differs."""
    saved_keys = _leaves_by_path(saved)
    target_keys = _leaves_by_path(target)
    missing = sorted(set(target_keys) - set(saved_keys))
    extra = sorted(set(saved_keys) - set(target_keys))
    if missing or extra:
        raise _Mismatch(
            f"Checkpoint {path} holds a different state tree than the target: "
            f"missing from checkpoint {missing[:5]}, unexpected in checkpoint {extra[:5]}. "
            "Was it written by a different model or optimizer?"
        )
    for key, want in target_keys.items():
        have = saved_keys[key]
        if tuple(have.shape) != tuple(want.shape) or np.dtype(have.dtype) != np.dtype(want.dtype):
            raise _Mismatch(
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
