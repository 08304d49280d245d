r"""MLP-Mixer recipe on digits: AdamW, linear warmup, linear decay, weight decay.

Tolstikhin et al., "MLP-Mixer" (2021), appendix: Adam (beta1 0.9, beta2 0.999)
with decoupled weight decay, learning rate 1e-3, linear warmup then linear decay,
as for ViT. A Mixer-S/16 shrunk to depth 4 and width 128, at 16 px with 4 px
patches (16 tokens). ``model_kwargs.image_size`` follows ``image_size``.

  python -m experiments.train --config=experiments/configs/mixer.py
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the MLP-Mixer recipe (no arguments: set keys with ``--config.<key>=``)."""
    if arg:
        raise ValueError(
            f"mixer.py takes no argument, got {arg!r}; set keys with --config.<key>=<value>."
        )
    c = default.get_config()
    c.model = "mixer_s16_224"
    c.model_kwargs = ml_collections.ConfigDict(
        {"image_size": c.get_ref("image_size"), "patch_size": 4, "depth": 4, "embed_dim": 128}
    )
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.momentum = 0.9  # AdamW's beta1
    c.weight_decay = 0.05
    c.schedule = "linear"
    c.warmup_steps = 30
    c.label_smoothing = 0.1
    return c
