"""A part of the real lr_batch study for its kill test: the SGD trials only.

Run as ``python -m archjax.studies run tests/studies/lr_batch_part.py:sgd --quick``: the
study's own trial function, configs and fixed settings, one compiled run per batch size.
"""

from archjax.studies import Study
from experiments.studies import lr_batch


def sgd(quick=False):
    """``lr_batch.define(quick)`` less its Adam and Hessian trials, under its own name."""
    study = lr_batch.define(quick)
    configs = [c for c in study.configs if c.get("optimizer") == "sgd"]
    return Study(**{**study.__dict__, "name": study.name + "_sgd", "configs": configs})
