"""The trial store: Optuna's ``RDBStorage`` (SQLite or PostgreSQL) and plain-row queries.

Optuna is used as a store and a queue, never as a sampler: every trial is an
enqueued config (``Study.enqueue_trial``), claimed by moving it from WAITING to
RUNNING, and finished with ``Study.tell``. Heartbeats mark a killed worker's
trial stale; Optuna's ``RetryHeartbeatStaleTrialCallback`` then re-queues the same
config. Rows returned here are plain dicts, one per trial.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

ENV_STORAGE = "ARCHJAX_STORAGE"  # read by the CLI when --storage is not given
ATTR_CONFIG = "config"  # trial user attributes written by the runner
ATTR_KEY = "key"
ATTR_METRICS = "metrics"
ATTR_ERROR = "error"


class StudyError(Exception):
    """Bad input or an unusable store; the message says what to change."""


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print and log)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide anything like user:pass@
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def scrub(text: str, url: str) -> str:
    """``text`` with ``url``'s password (if any) replaced by ``***``."""
    try:
        password = sqlalchemy.engine.make_url(url).password
    except Exception:
        match = re.search(r"://[^:/@]*:([^@]*)@", url)
        password = match.group(1) if match else None
    text = text.replace(url, mask_url(url))
    return text.replace(str(password), "***") if password else text


def sqlite_url(workdir: str) -> str:
    """The embedded default store, ``<workdir>/study.db``."""
    return "sqlite:///" + os.path.join(os.path.abspath(workdir), "study.db")


def _serialize_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Makes every SQLite transaction take the write lock at BEGIN.

    pysqlite starts a transaction only at the first write, so two workers can both
    read a trial as WAITING and both move it to RUNNING (Optuna's SELECT ... FOR
    UPDATE is a no-op in SQLite). BEGIN IMMEDIATE makes the claim atomic. This is
    SQLAlchemy's documented pysqlite recipe; PostgreSQL needs nothing (FOR UPDATE
    locks the row).
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
        # Write-ahead log: readers do not wait for writers, and a commit costs one
        # fsync instead of several. The database must sit on a local disk.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened by Optuna's setup predate the listeners


def open_storage(
    url: str, *, heartbeat_interval: int = 10, grace_period: int = 60, max_retry: int = 3
) -> optuna.storages.RDBStorage:
    """Opens (creating tables if needed) the store at ``url`` with heartbeats on.

    Args:
      url: an SQLAlchemy URL, e.g. ``sqlite:///runs/x/study.db`` or
        ``postgresql://user:password@host/db`` (needs the ``postgres`` extra).
      heartbeat_interval: seconds between a running trial's heartbeats.
      grace_period: seconds without a heartbeat after which a trial is stale and
        its config is re-queued.
      max_retry: how many times one config is re-queued after going stale.

    Raises:
      StudyError: the URL is malformed, its driver is missing or the database
        cannot be reached; the message never contains the password.
    """
    masked = mask_url(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StudyError(
            f"Storage URL {masked!r} is not a database URL; use sqlite:///path/study.db "
            "or postgresql://user@host/db."
        ) from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 120}
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    elif backend == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
        if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the extra installs 2.
            url = parsed.set(drivername="postgresql+psycopg2").render_as_string(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        for attempt in range(5):
            try:
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=callback,
                )
                break
            except ImportError:
                raise StudyError(
                    f"No database driver for {masked}; for PostgreSQL install "
                    "'archjax[postgres]' (psycopg2-binary)."
                ) from None
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers that start at once race to create the tables: try again.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
                first = str(getattr(e, "orig", e) or e).strip().splitlines()
                reason = first[0] if first else type(e).__name__
                raise StudyError(f"Cannot open storage {masked}: {scrub(reason, url)}") from None
    if backend == "sqlite":
        _serialize_sqlite(storage.engine)
    return storage


def all_trials(study: optuna.Study, states: Sequence[TrialState] | None = None):
    """The study's trials (no deep copies), optionally only those in ``states``."""
    return study.get_trials(deepcopy=False, states=None if states is None else tuple(states))


def rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state, key, config values, metrics, error.

    Config keys and metric names share one namespace (the runner refuses a metric
    named like a config key), so a row reads like the config it ran plus its results.
    """
    out = []
    for t in all_trials(study):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row["key"] = t.user_attrs.get(ATTR_KEY)
        row.update(t.user_attrs.get(ATTR_CONFIG, {}))
        row.update(t.user_attrs.get(ATTR_METRICS, {}))
        row["error"] = t.user_attrs.get(ATTR_ERROR)
        out.append(row)
    return out


def curves(study: optuna.Study) -> dict[int, tuple[list[int], list[float]]]:
    """Per completed trial: the (steps, values) it reported while running."""
    out = {}
    for t in all_trials(study, [TrialState.COMPLETE]):
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            out[t.number] = (steps, [t.intermediate_values[s] for s in steps])
    return out


def counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name (states without trials are left out)."""
    out: dict[str, int] = {}
    for t in all_trials(study):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def export_csv(table: Sequence[dict[str, Any]], path: str) -> str:
    """Writes ``table`` (e.g. :func:`rows`) as CSV with the union of keys as columns."""
    columns: list[str] = []
    for row in table:
        columns.extend(k for k in row if k not in columns)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in table:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def by_key(trials: Sequence[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """Trials grouped by their config key."""
    out: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        out.setdefault(t.user_attrs.get(ATTR_KEY), []).append(t)
    return out
