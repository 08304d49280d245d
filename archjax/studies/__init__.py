"""Studies: sweeps of trials in a resumable store, with fits and plots.

A study (:class:`Study`) lists trial configs and a trial function; the runner
queues the configs in Optuna's trial store (SQLite or PostgreSQL), workers claim
and run them, and the analysis reads plain rows back. See docs/studies.md.
"""

from archjax.studies.compute import training_compute
from archjax.studies.definition import Study, Trial, config_key, grid, load
from archjax.studies.runner import Queue, init, progress, work
from archjax.studies.store import (
    StudyError,
    counts,
    curves,
    export_csv,
    mask_url,
    open_storage,
    rows,
    sqlite_url,
)

__all__ = [
    "Queue",
    "Study",
    "StudyError",
    "Trial",
    "config_key",
    "counts",
    "curves",
    "export_csv",
    "grid",
    "init",
    "load",
    "mask_url",
    "open_storage",
    "progress",
    "rows",
    "sqlite_url",
    "training_compute",
    "work",
]
