r"""ViT recipe on digits: AdamW, linear warmup, cosine decay, weight decay 0.05.

Dosovitskiy et al. (2021) and DeiT (Touvron et al., 2021) train ViTs with AdamW
(beta1 0.9), a linear warmup into a cosine decay, decoupled weight decay (0.05 in
DeiT; biases and norms excluded) and label smoothing 0.1. SGD with the default
config's rate of 0.1 leaves a ViT at chance on digits; AdamW at 1e-3 trains it.
A ViT-Ti (``vit_tiny_patch16_224``) shrunk for digits to depth 4 and width 128 (4 heads),
at 16 px with 4 px patches: 16 tokens. ``model_kwargs.image_size`` follows
``image_size``; ``--config.model_kwargs.depth=12 --config.model_kwargs.embed_dim=192
--config.model_kwargs.num_heads=3`` trains the full ViT-Ti with the same recipe.

  python -m experiments.train --config=experiments/configs/vit.py
  python -m experiments.train --config=experiments/configs/vit.py \
      --config.model=vit_small_patch16_224
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the ViT recipe (no arguments: set keys with ``--config.<key>=``)."""
    if arg:
        raise ValueError(
            f"vit.py takes no argument, got {arg!r}; set keys with --config.<key>=<value>."
        )
    c = default.get_config()
    c.model = "vit_tiny_patch16_224"
    c.model_kwargs = ml_collections.ConfigDict(
        {
            "image_size": c.get_ref("image_size"),
            "patch_size": 4,
            "depth": 4,
            "embed_dim": 128,
            "num_heads": 4,
        }
    )
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.momentum = 0.9  # AdamW's beta1
    c.weight_decay = 0.05
    c.schedule = "cosine"
    c.warmup_steps = 30
    c.label_smoothing = 0.1
    return c
