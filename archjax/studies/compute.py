"""Compute accounting of a training trial (parameters and FLOPs from archjax.models)."""

from __future__ import annotations

from typing import Any


def training_compute(
    model: Any, *, image_size: int, channels: int, batch_size: int, steps: int, **create_kwargs: Any
) -> dict[str, float]:
    """Parameters, FLOPs per example and total training FLOPs of ``steps`` steps.

    Training FLOPs count the forward pass (``models.model_stats``, XLA's count)
    and a backward pass of twice its cost: ``3 * flops_per_example * examples``,
    the usual accounting of scaling-law papers (e.g. Kaplan et al. 2020).

    Args:
      model: a registered model name, or a built module (then no ``create_kwargs``).
      image_size: input height = width.
      channels: input channels.
      batch_size: examples per step.
      steps: training steps.
      **create_kwargs: knobs for ``models.create`` (``num_classes``, widths, ...).

    Returns:
      ``params``, ``flops_per_example``, ``examples_seen``, ``train_flops``.

    Example:
      >>> training_compute("resnet20", image_size=16, channels=1, batch_size=128,
      ...                  steps=300, num_classes=10)["train_flops"]
    """
    from archjax import models  # JAX loads only when a trial asks for its compute

    stats = models.model_stats(model, image_size=image_size, channels=channels, **create_kwargs)
    examples = batch_size * steps
    return {
        "params": int(stats["params"]),
        "flops_per_example": float(stats["flops"]),
        "examples_seen": int(examples),
        "train_flops": 3.0 * float(stats["flops"]) * examples,
    }
