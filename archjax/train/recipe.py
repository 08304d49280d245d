"""Deprecated: the recipe step is :func:`archjax.train.make_train_step` (one step for all paths).

``Recipe`` lives in :mod:`archjax.train.step`; ``make_recipe_train_step`` forwards
to ``make_train_step`` with a :class:`DeprecationWarning` and goes away in the
next release.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import optax

from archjax.train.step import Recipe, TrainStep, make_train_step


def make_recipe_train_step(
    model: nn.Module, tx: optax.GradientTransformation, recipe: Recipe | None = None
) -> TrainStep:
    """Deprecated alias of ``make_train_step(model, tx, recipe=recipe)``."""
    warnings.warn(
        "make_recipe_train_step is deprecated; use make_train_step(model, tx, recipe=recipe).",
        DeprecationWarning,
        stacklevel=2,
    )
    return make_train_step(model, tx, recipe=recipe or Recipe())
