r"""ConvNeXt recipe on digits: AdamW, warmup + cosine, weight decay 0.05, stochastic depth.

Liu et al., "A ConvNet for the 2020s" (2022): AdamW at 4e-3 per 4096 examples,
weight decay 0.05, linear warmup and cosine decay, label smoothing 0.1, stochastic
depth 0.1 (ConvNeXt-T), layer scale 1e-6 (the model's default). A 300-step run
needs a larger rate than the batch-scaled 1.25e-4: 2e-3. ConvNeXt-T at 1/4 width
with depths (1, 1, 3, 1); its 4x patchify stem and three 2x downsamplings need at
least 32 px, so digits are upsampled to 32 px.

  python -m experiments.train --config=experiments/configs/convnext.py
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the ConvNeXt recipe (no arguments: set keys with ``--config.<key>=``)."""
    if arg:
        raise ValueError(
            f"convnext.py takes no argument, got {arg!r}; set keys with --config.<key>=<value>."
        )
    c = default.get_config()
    c.model = "convnext_tiny"
    c.model_kwargs = ml_collections.ConfigDict({"depths": (1, 1, 3, 1), "width_multiplier": 0.25})
    c.image_size = 32
    c.random_crop_pad = 2
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.momentum = 0.9  # AdamW's beta1
    c.weight_decay = 0.05
    c.schedule = "cosine"
    c.warmup_steps = 30
    c.label_smoothing = 0.1
    c.drop_path_rate = 0.1
    return c
