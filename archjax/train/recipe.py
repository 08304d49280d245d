"""A train step assembled from recipe pieces: augmentation, mixing, SAM, accumulation, bf16.

:func:`make_train_step` stays the plain step; this factory composes the pieces
around the same loss so that each one is a separate, tested function:

  batch -> [augment] -> targets (one-hot, smoothed) -> [mixup/cutmix]
        -> grad_fn = value_and_grad(loss) -> [SAM] -> [accumulate over micro-batches]
        -> tx.update -> new state

With every piece off it computes exactly what :func:`make_train_step` does.
Optimizer-side pieces (AGC, spike clipping, 8/4-bit state, EMA) live in the
optax chain (:func:`archjax.optim.create_optimizer`), not here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from archjax.train.accumulate import accumulate_gradients
from archjax.train.losses import correct
from archjax.train.mixing import mix_batch, one_hot_targets
from archjax.train.precision import get_policy
from archjax.train.sam import sam_gradients
from archjax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """The step-side recipe pieces; the defaults turn every one off."""

    # Label-smoothing eps of the targets (before mixing).
    label_smoothing: float = 0.0
    # Mixup / CutMix Beta alphas (0 = off; both > 0: one of them per batch).
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # SAM radius (0 = off) and its m-sharpness groups (data devices for per-device SAM).
    sam_rho: float = 0.0
    sam_groups: int = 1
    # Gradient accumulation: equal micro-batches per step.
    microbatches: int = 1
    # Precision policy name (archjax.train.list_policies()); the model's dtype must match.
    precision: str = "fp32"
    # Image augmentation run inside the step, (key, images) -> images (e.g. RandAugment).
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None

    def __post_init__(self):
        get_policy(self.precision)  # raises on an unknown name
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        for name in ("sam_groups", "microbatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"Recipe.{name} must be >= 1, got {getattr(self, name)}.")
        if self.sam_rho < 0:
            raise ValueError(f"Recipe.sam_rho must be >= 0 (0 = off), got {self.sam_rho}.")


def make_recipe_train_step(
    model: nn.Module, tx: optax.GradientTransformation, recipe: Recipe = Recipe()
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds ``train_step(state, batch) -> (state, metrics)`` with the pieces of ``recipe``.

    Args:
      model: a classifier with a ``num_classes`` field, called as ``model(x, train=True)``.
      tx: the optax optimizer.
      recipe: which pieces to use.

    Returns:
      A pure step with the same contract and metrics (``loss``, ``accuracy``,
      ``grad_norm``) as :func:`archjax.train.make_train_step`. ``loss`` is the loss
      on the (mixed) targets at the unperturbed weights; ``accuracy`` is against the
      original labels.

    Example:
      >>> step = make_recipe_train_step(model, tx, Recipe(sam_rho=0.05, microbatches=4))
      >>> state, metrics = jit_train_step(step, mesh=mesh)(state, batch)
    """
    policy = get_policy(recipe.precision)
    num_classes = model.num_classes

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        images = batch["image"]
        if recipe.augment is not None:
            images = recipe.augment(jax.random.fold_in(rng, 1), images)
        targets = one_hot_targets(
            batch["label"], num_classes, label_smoothing=recipe.label_smoothing
        )
        images, targets = mix_batch(
            jax.random.fold_in(rng, 2),
            images,
            targets,
            mixup_alpha=recipe.mixup_alpha,
            cutmix_alpha=recipe.cutmix_alpha,
        )
        inputs = {"image": images, "targets": targets, "label": batch["label"]}

        def loss_fn(params, b, key):
            variables = {**state.variables(), "params": params}
            logits, updates = model.apply(
                variables,
                policy.cast_input(b["image"]),
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            logits = logits.astype(policy.output_dtype)
            loss = jnp.mean(optax.softmax_cross_entropy(logits, b["targets"]))
            aux = {
                "accuracy": jnp.mean(correct(logits, b["label"])),
                "batch_stats": updates.get("batch_stats", state.batch_stats),
            }
            return loss, aux

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if recipe.sam_rho:
            grad_fn = sam_gradients(grad_fn, rho=recipe.sam_rho, num_groups=recipe.sam_groups)
        grad_fn = accumulate_gradients(grad_fn, recipe.microbatches)
        (loss, aux), grads = grad_fn(state.params, inputs, rng)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, param_updates),
            batch_stats=aux["batch_stats"],
            opt_state=opt_state,
        )
        metrics = {"loss": loss, "accuracy": aux["accuracy"], "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return train_step
