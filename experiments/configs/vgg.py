r"""VGG recipe on digits: SGD momentum, weight decay 5e-4, dropout 0.5 in the head.

Simonyan & Zisserman, "Very Deep Convolutional Networks" (2015): SGD momentum 0.9,
weight decay 5e-4, dropout 0.5 after the two hidden layers of the head, the
learning rate divided by 10 in steps. With BatchNorm (``vgg*_bn``) a 5x larger
rate than the paper's 0.01 trains stably. VGG halves the resolution five times, so
digits are upsampled to 32 px; the widths (head included) are scaled by 1/8.

  python -m experiments.train --config=experiments/configs/vgg.py
"""

import ml_collections

from experiments import config_utils
from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the VGG recipe; ``arg`` is "key=value,..." applied on top."""
    c = default.get_config()
    c.model = "vgg11_bn"
    c.model_kwargs = ml_collections.ConfigDict({"width_multiplier": 1 / 8})
    c.image_size = 32
    c.random_crop_pad = 2
    c.optimizer = "sgd"
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 5e-4
    c.schedule = "step"  # x0.1 at 50% and 75% of the steps
    c.warmup_steps = 15
    c.label_smoothing = 0.0
    c.dropout_rate = 0.5
    return config_utils.apply_arg(c, arg)
