"""The :class:`Checkpointer`: save, restore (falling back past bad steps) and retention."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from archjax.checkpoint import checks
from archjax.checkpoint.checksums import resolve, start_checksums
from archjax.checkpoint.directories import (
    check_checkpoint_directory,
    set_aside,
    set_aside_unfinished,
)
from archjax.checkpoint.errors import (
    CheckpointDiskFullError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWarning,
    CorruptCheckpointError,
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
        check_checkpoint_directory(self.directory)
        # Before Orbax sees them: it deletes an unfinished step when saving it again.
        for src, dst in set_aside_unfinished(self.directory).items():
            warnings.warn(
                f"Checkpoint save {src} never finished (the process was killed or the disk "
                f"was full); moved it to {dst} (not deleted).",
                CheckpointWarning,
                stacklevel=2,
            )
        self.best_metric = best_metric
        # (step, device checksums) of saves whose checksums.json is not written yet.
        self._pending: list[tuple[int, Any]] = []
        self._saving: tuple[int, int] | None = None  # (step, bytes) of the latest save
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
        with self._disk_full_reported():
            self._write_checksums()  # of the previous save, long finished by now
        meta = {"config": config, "metrics": metrics}
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        if self.best_metric and metrics is not None and self.best_metric not in metrics:
            raise ValueError(f"metrics {sorted(metrics)} lack best_metric {self.best_metric!r}.")
        self._saving = (step, sum(x.nbytes for x in jax.tree.leaves(state)))
        with self._disk_full_reported():
            started = self._manager.save(
                step, args=ocp.args.Composite(**items), metrics=metrics, force=force
            )
        if started:
            # Dispatched after Orbax's copy to host (on one device queue the copy would
            # wait for the hash) and not awaited: it runs while Orbax writes.
            self._pending.append((step, start_checksums(state)))
        return started

    def reached_preemption(self, step: int) -> bool:
        """Whether every process should save at ``step`` and stop (a preemption notice).

        Orbax's view of the distributed runtime's preemption sync point: when any
        process of a multi-process run gets SIGTERM, all of them agree on the first
        step that none has passed, and this is true there on each. Every process
        must call it after every step. Always ``False`` without ``jax.distributed``.
        """
        return self._manager.reached_preemption(step)

    @contextlib.contextmanager
    def _disk_full_reported(self) -> Iterator[None]:
        """Turns Orbax's and TensorStore's "no space left" errors into one clear line."""
        try:
            yield
        except Exception as e:
            if not _is_disk_full(e):
                raise
            step, size = self._saving or (None, 0)
            free = shutil.disk_usage(self.directory).free
            intact = [s for s in self._manager.all_steps() if s != step]
            raise CheckpointDiskFullError(
                f"No space left on the device of {self.directory} to save step {step}: "
                f"{_mib(free)} free, the state takes {_mib(size)} (uncompressed). "
                f"Checkpoints {sorted(intact)} are intact; free some space, then re-run "
                "to resume."
            ) from e

    def _write_checksums(self) -> None:
        """Writes ``<step>/checksums.json`` for finished saves (atomically, process 0)."""
        if not self._pending:
            return
        self._manager.wait_until_finished()
        for step, sums in self._pending:
            values = resolve(sums)
            path = os.path.join(self.directory, str(step))
            if jax.process_index() == 0 and os.path.isdir(path):  # not deleted meanwhile
                tmp = os.path.join(path, f".checksums.json.tmp{os.getpid()}")
                with open(tmp, "w") as f:
                    json.dump(values, f)
                os.replace(tmp, os.path.join(path, checks.CHECKSUMS))
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
          CheckpointMismatchError: the checkpoint does not match ``target`` (the
            message names the first differing leaf).
          CorruptCheckpointError: the checkpoint at ``step`` cannot be read or fails
            its checksums.
          CheckpointError: with ``step=None``, no checkpoint at all can be read.
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
                return self._restore_step(target, bad)
            except CorruptCheckpointError as e:  # a mismatch is the caller's error: raised
                reason = str(e) if len(str(e)) < 300 else str(e)[:300] + "..."
                errors.append(f"step {bad}: {reason}")
                older = [s for s in steps if s < bad]
                moved = set_aside(self.directory, bad)
                self._manager.reload()
                warnings.warn(
                    f"Checkpoint at step {bad} in {self.directory} is corrupt or incomplete "
                    f"({reason}); moved it to {moved} (not deleted) and "
                    + (f"trying step {older[-1]}." if older else "no older checkpoint is left."),
                    CheckpointWarning,
                    stacklevel=2,
                )
        raise CheckpointError(f"No readable checkpoint in {self.directory}: {'; '.join(errors)}")

    def _restore_step(self, target: Any, step: int) -> tuple[Any, dict | None]:
        """One step's checked restore (raises the errors of :mod:`archjax.checkpoint.checks`)."""
        path = os.path.join(self.directory, str(step))
        saved = checks.saved_tree(self._manager, step, path)
        checks.check_matches(saved, target, path)
        on_disk, complete = checks.older_target(target, saved)
        items = {"state": ocp.args.StandardRestore(on_disk)}
        has = {k: os.path.isdir(os.path.join(path, k)) for k in ("data", "meta")}
        for key in ("data", "meta"):
            if has[key]:
                items[key] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for unreadable files
            if "devices are different from the devices used to save" in str(e):
                # Saved on other devices (another process count): the caller's target
                # needs shardings for these devices; the files are fine.
                raise CheckpointMismatchError(
                    f"{path} was saved on other devices than this process has; restore into "
                    "a target with shardings for them, e.g. abstract_train_state(..., "
                    "mesh=archjax.parallel.make_mesh(...))."
                ) from e
            raise CorruptCheckpointError(f"Could not read checkpoint {path}: {_reason(e)}") from e
        state = complete(restored["state"])
        checks.check_checksums(path, state)
        return state, (restored["data"] if has["data"] else None)

    def metadata(self, step: int) -> dict:
        """The ``meta`` item of ``step``: ``config`` and ``metrics`` (or ``{}``)."""
        path = os.path.join(self.directory, str(step), "meta")
        if not os.path.isdir(path):
            return {}
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def wait_until_finished(self) -> None:
        """Blocks until background saves (and their checksums) are on disk."""
        with self._disk_full_reported():
            self._manager.wait_until_finished()
            self._write_checksums()

    def close(self) -> None:
        """Waits for pending saves and releases resources."""
        try:
            with self._disk_full_reported():
                self._write_checksums()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(error: BaseException) -> str:
    """The innermost cause's first line, without the reprs of library internals (Orbax
    formats a tensorstore spec method into its message: ``<bound method pybind11_...>``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    line = re.sub(r"<bound method [^>]*>", "<spec>", lines[0] if lines else "")
    return f"{type(error).__name__}: {line}"[:300]


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or a cause is ENOSPC (TensorStore reports it as a ValueError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        text = str(error)
        if "No space left on device" in text or f"os_error_code='{errno.ENOSPC}'" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
