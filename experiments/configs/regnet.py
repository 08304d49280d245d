r"""RegNet recipe on digits: SGD momentum, learning rate 0.1, cosine, weight decay 5e-5.

Radosavovic et al., "Designing Network Design Spaces" (2020), section 3 and
appendix: SGD momentum 0.9, learning rate 0.1 at batch 128 (scaled linearly with
the batch), half-period cosine decay, weight decay 5e-5, no label smoothing;
a short linear warmup for stability. ``regnety_002`` (RegNetY-200MF) on 16 px digits.

  python -m experiments.train --config=experiments/configs/regnet.py
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the RegNet recipe (no arguments: set keys with ``--config.<key>=``)."""
    if arg:
        raise ValueError(
            f"regnet.py takes no argument, got {arg!r}; set keys with --config.<key>=<value>."
        )
    c = default.get_config()
    c.model = "regnety_002"
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 5e-5
    c.schedule = "cosine"
    c.warmup_steps = 15
    c.label_smoothing = 0.0
    return c
