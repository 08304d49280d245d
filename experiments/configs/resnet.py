r"""ResNet recipe on digits: SGD with Nesterov momentum, warmup + cosine, weight decay.

He et al., "Deep Residual Learning" (2016) train CIFAR ResNets with SGD momentum 0.9,
learning rate 0.1 at batch 128 and weight decay 1e-4 (5e-4 in most later CIFAR
recipes); warmup, a cosine decay and label smoothing 0.1 come from Goyal et al.
(2017), Loshchilov & Hutter (2017) and "Bag of Tricks" (He et al., 2019). This is
exactly the main job's default config; the file exists so that every family has one.

  python -m experiments.train --config=experiments/configs/resnet.py
  python -m experiments.train --config=experiments/configs/resnet.py --config.model=resnet32
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the ResNet recipe (no arguments: set keys with ``--config.<key>=``)."""
    if arg:
        raise ValueError(
            f"resnet.py takes no argument, got {arg!r}; set keys with --config.<key>=<value>."
        )
    c = default.get_config()
    c.model = "resnet20"
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.warmup_steps = 15
    c.label_smoothing = 0.1
    return c
