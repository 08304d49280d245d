"""A part of the real lr_batch study for its kill test: the SGD trials only.

Run as ``python -m archjax.studies run tests/studies/lr_batch_part.py:sgd --quick``: the
study's own trial function, configs and fixed settings, one compiled run per batch size.
Each trial ends with a short pause, so that the run lasts long enough for the test to
kill it part-way on any machine: without it, once the first trials have compiled the
programs, the other trials took under the test's polling interval here and the whole
study could finish before the kill landed.
"""

import dataclasses
import functools
import time

from experiments.studies import lr_batch

PAUSE_S = 0.3  # after each trial: 16 trials last >= 4.8 s after the first compiles


def _paused(trial):
    @functools.wraps(trial)
    def run(config, optuna_trial):
        result = trial(config, optuna_trial)
        time.sleep(PAUSE_S)
        return result

    return run


def sgd(quick=False):
    """``lr_batch.define(quick)`` less its Adam and Hessian trials, under its own name."""
    study = lr_batch.define(quick)
    configs = [c for c in study.configs if c.get("optimizer") == "sgd"]
    return dataclasses.replace(
        study, name=study.name + "_sgd", configs=configs, trial=_paused(study.trial)
    )
