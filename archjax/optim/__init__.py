"""Optimizers as optax transforms, selectable by name."""

from archjax.optim.presets import create_optimizer, decay_mask, list_optimizers, warmup_cosine

__all__ = ["create_optimizer", "decay_mask", "list_optimizers", "warmup_cosine"]
