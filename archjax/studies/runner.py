"""The runner: enqueue missing configs, claim, run, record, until the queue is empty.

Many workers may share one store (independent workers, one per host or device);
a multi-host slice may instead run one worker whose trials are single
``jax.distributed`` programs (:func:`work` with ``slice_wide=True``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from archjax.studies import store as S
from archjax.studies.definition import Study, Trial, canonical, config_key
from archjax.studies.store import StudyError

optuna.logging.set_verbosity(optuna.logging.WARNING)
_log = logging.getLogger("archjax.studies")

_ACTIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


def init(study: Study, storage, *, retry_failed: bool = False) -> list[str]:
    """Creates the study in the store (once) and enqueues every config not yet there.

    A config counts as there when it has a waiting, running or complete trial, or
    a failed one unless ``retry_failed``. Every config is checked before the store
    is touched, and a stored study with the same name must have the same trial
    function, fixed settings and objective.

    Returns:
      The keys of the configs enqueued now.

    Raises:
      StudyError: a config is invalid or listed twice, or the stored study differs.
    """
    configs = [dict(c) for c in study.configs]
    keys = [config_key(c) for c in configs]
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            raise StudyError(f"Study {study.name!r}: config {i} repeats config {seen[k]}: "
                             f"{canonical(configs[i])}")  # fmt: skip
        seen[k] = i
    if study.check is not None:
        for c in configs:
            try:
                study.check(study.full_config(c))
            except Exception as e:
                raise StudyError(
                    f"Study {study.name!r}: config {canonical(c)} is invalid: {_first_line(e)}"
                ) from None
    opt = _open_or_create(study, storage)
    existing = S.by_key(S.all_trials(opt))
    states = (*_ACTIVE, *(() if retry_failed else (TrialState.FAIL,)))
    new = []
    for c, k in zip(configs, keys, strict=True):
        if not any(t.state in states for t in existing.get(k, [])):
            opt.enqueue_trial({}, user_attrs={S.ATTR_CONFIG: c, S.ATTR_KEY: k})
            new.append(k)
    return new


def _open_or_create(study: Study, storage) -> optuna.Study:
    """The stored study, created with ``study``'s identity or checked against it."""
    opt = optuna.create_study(
        storage=storage, study_name=study.name, direction=study.direction, load_if_exists=True
    )
    stored = opt.user_attrs
    mine = study.identity()
    if not stored:
        for k, v in mine.items():
            opt.set_user_attr(k, v)
        return opt
    for k, v in mine.items():
        if stored.get(k) != v:
            raise StudyError(
                f"Study {study.name!r} already exists in this store with {k} "
                f"{stored.get(k)!r}, not {v!r}; use another study name or workdir."
            )
    return opt


def load(study: Study, storage) -> optuna.Study:
    """The stored study (it must exist and match ``study``)."""
    try:
        opt = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        raise StudyError(
            f"No study {study.name!r} in this store; run `init` or `run` first."
        ) from None
    for k, v in study.identity().items():
        if opt.user_attrs.get(k) != v:
            raise StudyError(f"Stored study {study.name!r} has {k} "
                             f"{opt.user_attrs.get(k)!r}, not {v!r}.")  # fmt: skip
    return opt


def progress(study: Study, opt: optuna.Study) -> tuple[int, int]:
    """(configs finished, configs defined): finished = complete, or failed and not queued."""
    by = S.by_key(S.all_trials(opt))
    done = 0
    for c in study.configs:
        states = {t.state for t in by.get(config_key(c), [])}
        if TrialState.COMPLETE in states or (
            TrialState.FAIL in states and not states & {TrialState.WAITING, TrialState.RUNNING}
        ):
            done += 1
    return done, len(study.configs)


class _Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a background thread."""

    def __init__(self, storage, trial_id: int):
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self._stop.wait(self._storage.get_heartbeat_interval()):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as e:  # the store is briefly unreachable: keep trying
                _log.warning("heartbeat failed: %s", _first_line(e))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Queue:
    """This worker's view of the waiting trials, claimed one at a time.

    The waiting list is read once and walked in order; it is read again only when
    walked through, so a claim costs one write, not a read of the whole queue.
    """

    def __init__(self, opt: optuna.Study):
        self._opt = opt
        self._waiting: list[FrozenTrial] = []

    def claim(self) -> FrozenTrial | None:
        """Moves one waiting trial to RUNNING for this worker; None if none waits.

        The move is atomic (a row lock; BEGIN IMMEDIATE in SQLite), so a trial has
        exactly one claimer. Re-queues stale trials (a killed worker's) first.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self._opt)
        for refill in (False, True):
            if refill:
                self._read()
            while self._waiting:
                trial = self._waiting.pop(0)
                if self._take(trial):
                    return trial
        return None

    def _take(self, trial: FrozenTrial) -> bool:
        # Optuna has no public getter for the storage or a trial's id; the storage
        # methods themselves are its public API.
        try:
            if self._opt._storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                self._opt._storage.record_heartbeat(trial._trial_id)
                return True
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        return False

    def _read(self) -> None:
        """Reads the waiting trials; prunes those whose config is queued twice or done.

        Duplicates arise only when two ``init`` run at once; a duplicate is claimed
        (so nobody else runs it) and marked PRUNED with the trial it duplicates.
        """
        taken: dict[str, int] = {}
        waiting = []
        for t in sorted(S.all_trials(self._opt), key=lambda t: t.number):
            key = t.user_attrs.get(S.ATTR_KEY)
            if t.state in (TrialState.RUNNING, TrialState.COMPLETE):
                taken.setdefault(key, t.number)
        for t in sorted(S.all_trials(self._opt, [TrialState.WAITING]), key=lambda t: t.number):
            key = t.user_attrs.get(S.ATTR_KEY)
            if key in taken:
                if self._take(t):
                    storage = self._opt._storage
                    storage.set_trial_user_attr(t._trial_id, "duplicate_of", taken[key])
                    storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
                continue
            taken[key] = t.number
            waiting.append(t)
        self._waiting = waiting


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _device_kind() -> str:
    jax = sys.modules.get("jax")  # only if the trial function loaded JAX
    if jax is not None:
        try:
            return jax.devices()[0].device_kind
        except Exception:
            pass
    return platform.machine() or "cpu"


def _metrics(study: Study, config: Mapping[str, Any], result: Any) -> dict[str, Any]:
    """Checks a trial function's result: a mapping of names to JSON numbers/strings."""
    if not isinstance(result, Mapping):
        raise TypeError(f"The trial function returned {type(result).__name__}, not a dict.")
    out = {}
    for k, v in result.items():
        if k in config or k in ("trial", "state", "key", "error"):
            raise ValueError(f"Metric {k!r} has the name of a config key or a row column.")
        if isinstance(v, np.generic):
            v = v.item()
        if not isinstance(v, int | float | str | bool | type(None)):
            raise TypeError(f"Metric {k!r} is a {type(v).__name__}; metrics are numbers.")
        out[k] = v
    if study.objective not in out:
        raise KeyError(f"The trial function returned no {study.objective!r} (the objective).")
    return out


def _objective_value(study: Study, metrics: Mapping[str, Any]) -> float:
    value = float(metrics[study.objective])
    if math.isnan(value):  # a diverged trial completes with the worst value
        return math.inf if study.direction == "minimize" else -math.inf
    return value


def _run_trial_fn(study: Study, trial: FrozenTrial, workdir: str, report) -> tuple[Any, str]:
    """(metrics or None, traceback or '') of one run of the trial function."""
    key = trial.user_attrs[S.ATTR_KEY]
    config = trial.user_attrs[S.ATTR_CONFIG]
    trial_dir = os.path.join(os.path.abspath(workdir), "trials", key)
    os.makedirs(trial_dir, exist_ok=True)
    start = time.time()
    try:
        result = study.trial(study.full_config(config), Trial(trial.number, key, trial_dir, report))
        metrics = _metrics(study, study.full_config(config), result)
        metrics.setdefault("wall_time", time.time() - start)
        metrics.setdefault("device_kind", _device_kind())
        return metrics, ""
    except Exception:
        return None, traceback.format_exc()


def _record(opt: optuna.Study, study: Study, trial: FrozenTrial, metrics, error: str) -> None:
    """Stores the metrics (COMPLETE) or the traceback (FAIL) of a claimed trial."""
    storage = opt._storage
    try:
        if metrics is not None:
            storage.set_trial_user_attr(trial._trial_id, S.ATTR_METRICS, metrics)
            value = _objective_value(study, metrics)
            storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [value])
        else:
            storage.set_trial_user_attr(trial._trial_id, S.ATTR_ERROR, error)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Declared stale meanwhile (heartbeats stopped for a grace period): its retry
        # resumes from this trial's checkpoints, so the result is recorded once.
        _log.warning("trial %d was declared stale; its retry will record it", trial.number)


def work(
    study: Study,
    storage,
    workdir: str,
    *,
    poll_interval: float = 1.0,
    show_progress: bool = True,
    slice_wide: bool = False,
) -> int:
    """A worker: claim, run, record, until nothing waits and nothing runs.

    Args:
      study: the definition (its configs are only used for the progress bar).
      storage: an opened store (:func:`archjax.studies.store.open_storage`); in
        slice-wide mode only process 0's is used (others may pass None), and it
        may be a function that opens it, so that a failure to open reaches the
        other processes too.
      workdir: the study's directory; trial ``k`` runs in ``workdir/trials/k``.
      poll_interval: seconds between looks at the queue while others' trials run.
      show_progress: a progress bar of configs finished / defined, with an ETA.
      slice_wide: every JAX process runs every trial (see :func:`work_slice`).

    The caller runs ``study.setup`` first (the CLI does).

    Returns:
      The number of trials this worker ran.
    """
    if slice_wide:
        return work_slice(study, storage, workdir, poll_interval=poll_interval)
    opt = load(study, storage)
    queue = Queue(opt)
    ran = 0
    bar = _bar(study, opt, show_progress)
    try:
        while True:
            trial = queue.claim()
            if trial is None:
                if not S.all_trials(opt, [TrialState.RUNNING]):
                    return ran
                time.sleep(poll_interval)
                _refresh(bar, study, opt, every=5.0)
                continue
            trial_id = trial._trial_id
            report = functools.partial(opt._storage.set_trial_intermediate_value, trial_id)
            with _Heartbeat(opt._storage, trial_id):
                metrics, error = _run_trial_fn(study, trial, workdir, report)
                _record(opt, study, trial, metrics, error)
            if error:
                tqdm.write(f"trial {trial.number} failed: {error.strip().splitlines()[-1]}")
            ran += 1
            _refresh(bar, study, opt, every=5.0)
    finally:
        if bar is not None:
            bar.close()


def _bar(study: Study, opt: optuna.Study, show: bool):
    if not show:
        return None
    done, total = progress(study, opt)
    return tqdm(total=total, initial=done, desc=study.name, unit="trial", file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 10.0, dynamic_ncols=True)  # fmt: skip


def _refresh(bar, study: Study, opt: optuna.Study, *, every: float = 0.0) -> None:
    """Updates the bar from the store (which other workers also write)."""
    if bar is not None and time.time() - getattr(bar, "_store_read", 0.0) >= every:
        done, _ = progress(study, opt)
        bar.update(done - bar.n)
        bar._store_read = time.time()


def work_slice(study: Study, storage, workdir: str, *, poll_interval: float = 1.0) -> int:
    """One worker spanning a multi-process JAX run: every process runs every trial.

    Process 0 claims a trial and broadcasts its config
    (``jax.experimental.multihost_utils``); every process runs the trial function
    (a collective program); the processes agree on success; process 0 records.
    Process 0 always broadcasts something (a trial, "wait", "stop" or its error),
    so a failing claim ends every process instead of leaving them blocked.
    """
    import jax

    main = jax.process_index() == 0
    opt = None
    ran = 0
    while True:
        if main:
            try:
                if opt is None:
                    opt = load(study, storage() if callable(storage) else storage)
                    queue = Queue(opt)
                trial = queue.claim()
                if trial is not None:
                    msg = {"op": "run", "trial": trial.number}
                elif S.all_trials(opt, [TrialState.RUNNING]):
                    msg = {"op": "wait"}
                else:
                    msg = {"op": "stop"}
                if trial is not None:
                    msg["user_attrs"] = trial.user_attrs
            except BaseException as e:
                _broadcast_json({"op": "abort", "error": _first_line(e)})
                raise
            _broadcast_json(msg)
        else:
            msg = _broadcast_json(None)
        if msg["op"] == "stop":
            return ran
        if msg["op"] == "abort":
            raise S.StudyError(f"Process 0 stopped the study: {msg['error']}")
        if msg["op"] == "wait":
            time.sleep(poll_interval)
            continue
        frozen = trial if main else _Frozen(msg["trial"], msg["user_attrs"])
        if main:
            trial_id = trial._trial_id
            report = functools.partial(opt._storage.set_trial_intermediate_value, trial_id)
            beat = _Heartbeat(opt._storage, trial_id).__enter__()
        else:
            report = lambda s, v: None
        metrics, error = _run_trial_fn(study, frozen, workdir, report)
        failed = _allgather_flags(bool(error))
        if main:
            beat.__exit__()
            if failed.any() and not error:
                error = f"The trial raised on processes {np.flatnonzero(failed).tolist()}."
            _record(opt, study, trial, None if error else metrics, error)
        ran += 1


class _Frozen:
    """The parts of a FrozenTrial that a non-main process needs to run a trial."""

    def __init__(self, number: int, user_attrs: dict):
        self.number, self.user_attrs = number, user_attrs


def _broadcast_json(obj: Any) -> Any:
    """``obj`` from process 0 on every process (JSON as a padded uint8 array)."""
    import jax
    from jax.experimental import multihost_utils

    data = json.dumps(obj).encode() if jax.process_index() == 0 else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    padded = 1 << max(size - 1, 1).bit_length()  # few distinct shapes: few compiles
    buf = np.zeros(padded, np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return json.loads(out[:size].tobytes().decode())


def _allgather_flags(flag: bool) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.array([flag]))).reshape(-1)
