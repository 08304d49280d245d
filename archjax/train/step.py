"""The one train step (with its recipe pieces), the eval step, and their ``jax.jit`` compilation.

``make_train_step(model, tx, recipe=Recipe())`` returns a pure function
``(state, batch) -> (state, metrics)`` with no knowledge of devices. The
:class:`Recipe` says which step-side pieces it uses, each a separate, tested
function composed around the same loss:

  batch -> [augment] -> targets (one-hot, smoothed) -> [mixup/cutmix]
        -> grad_fn = value_and_grad(loss) -> [pmean over devices] -> [SAM]
        -> [accumulate over micro-batches] -> tx.update -> new state

With the default recipe every piece is off and it is plain SGD on the
cross-entropy. Optimizer-side pieces (AGC, spike clipping, 8/4-bit state, EMA)
live in the optax chain (:func:`archjax.optim.create_optimizer`), not here. The
same step runs on one device, under every ``jax.jit`` sharding (data, FSDP,
tensor parallel: :func:`jit_train_step`) and per device (``shard_map``/``pmap``,
:mod:`archjax.train.per_device`, through ``axis_name``). The eval step calls the
model through the same :func:`_forward`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from archjax.parallel import (
    MODEL_AXIS,
    ShardingRules,
    cross_replica_batch_norm,
    data_sharding,
    gather_fsdp,
    replicated,
)
from archjax.train.accumulate import accumulate_gradients
from archjax.train.losses import correct, cross_entropy
from archjax.train.mixing import mix_batch, one_hot_targets
from archjax.train.precision import Policy, get_policy
from archjax.train.sam import sam_gradients
from archjax.train.state import TrainState, state_sharding

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
AxisName = str | tuple[str, ...]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


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


def _forward(
    model: nn.Module,
    policy: Policy,
    variables: dict[str, Any],
    images: jax.Array,
    *,
    train: bool,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """The one model call of both steps: ``(logits in the output dtype, batch_stats updates)``."""
    x = policy.cast_input(images)
    if train:
        logits, updates = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
    else:
        logits, updates = model.apply(variables, x, train=False), {}
    return logits.astype(policy.output_dtype), updates


def _averaged_over(grad_fn: Callable[..., Any], axis_name: AxisName) -> Callable[..., Any]:
    """``grad_fn`` whose loss, aux and gradients are ``pmean``-ed over ``axis_name``."""
    return lambda params, batch, rng: jax.lax.pmean(grad_fn(params, batch, rng), axis_name)


def _num_classes(model: nn.Module) -> int:
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError(
            f"make_train_step needs a classifier with an int num_classes field (the width "
            f"of the one-hot targets); {type(model).__name__} has num_classes={num_classes!r}."
        )
    return num_classes


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    recipe: Recipe = Recipe(),
    axis_name: AxisName | None = None,
    label_smoothing: float | None = None,
) -> TrainStep:
    """Builds the train step ``(state, batch) -> (state, metrics)`` with ``recipe``'s pieces.

    Args:
      model: a classifier with an int ``num_classes`` field, called as
        ``model(images, train=True)`` and returning logits.
      tx: the optax optimizer whose state is ``state.opt_state``.
      recipe: which step-side pieces to use (default: none, plain SGD on the
        cross-entropy).
      axis_name: for per-device code only (inside ``shard_map``/``pmap`` over this
        axis; see :mod:`archjax.train.per_device`): loss, metrics, BatchNorm
        statistics and gradients are averaged over it right after each backward
        pass, and BatchNorm is cross-replica, so every later piece (SAM,
        accumulation, the optimizer) sees what the global ``jax.jit`` step sees.
      label_smoothing: deprecated; use ``recipe=Recipe(label_smoothing=...)``.

    Returns:
      A pure ``train_step(state, batch) -> (new_state, metrics)``: ``batch`` has
      ``"image"`` ``[B, H, W, C]`` and ``"label"`` ``[B]``; metrics are scalars
      ``loss`` (on the (mixed) targets at the unperturbed weights), ``accuracy``
      (against the original labels) and ``grad_norm``, over the global batch.

    Example:
      >>> step = make_train_step(model, tx, recipe=Recipe(sam_rho=0.05, microbatches=4))
      >>> step = jit_train_step(step, mesh=mesh, state=state)
      >>> state, metrics = step(state, shard_batch(batch, mesh))
    """
    if label_smoothing is not None:
        warnings.warn(
            "make_train_step(label_smoothing=...) is deprecated; pass "
            "recipe=Recipe(label_smoothing=...).",
            DeprecationWarning,
            stacklevel=2,
        )
        recipe = dataclasses.replace(recipe, label_smoothing=label_smoothing)
    policy = get_policy(recipe.precision)
    num_classes = _num_classes(model)

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
            logits, updates = _forward(model, policy, variables, b["image"], train=True, rng=key)
            loss = jnp.mean(optax.softmax_cross_entropy(logits, b["targets"]))
            aux = {
                "accuracy": jnp.mean(correct(logits, b["label"])),
                "batch_stats": updates.get("batch_stats", state.batch_stats),
            }
            return loss, aux

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if axis_name is not None:
            grad_fn = _averaged_over(grad_fn, axis_name)
        if recipe.sam_rho:
            grad_fn = sam_gradients(grad_fn, rho=recipe.sam_rho, num_groups=recipe.sam_groups)
        grad_fn = accumulate_gradients(grad_fn, recipe.microbatches)
        (loss, aux), grads = grad_fn(state.params, inputs, rng)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        batch_stats = aux["batch_stats"]
        # An optimizer wrapped in optax.apply_if_finite (skip_nonfinite) skipped a
        # non-finite update: the statistics of that forward pass are dropped with it.
        finite = optax.tree_utils.tree_get(opt_state, "last_finite")
        if finite is not None:
            batch_stats = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), batch_stats, state.batch_stats
            )
        new_state = state.apply_updates(param_updates, opt_state, batch_stats)
        metrics = {"loss": loss, "accuracy": aux["accuracy"], "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    if axis_name is None:
        return train_step

    def per_device_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        with cross_replica_batch_norm(axis_name):
            return train_step(state, batch)

    return per_device_step


def make_eval_step(
    model: nn.Module, *, precision: str = "fp32"
) -> Callable[[TrainState, Batch], Metrics]:
    """Builds the pure eval step: sums over the batch, so that batches can be added up.

    Args:
      model: the classifier the train step trains.
      precision: the recipe's precision policy name (the input is cast as in training).

    Returns:
      ``eval_step(state, batch) -> {"loss_sum", "correct", "count"}``. If the batch
      has a ``"mask"`` (1 = real example, 0 = padding) padded examples count zero.
    """
    policy = get_policy(precision)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        logits, _ = _forward(model, policy, state.variables(), batch["image"], train=False)
        mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
        n = jnp.sum(mask)
        loss = cross_entropy(logits, batch["label"], mask=mask)
        return {
            "loss_sum": loss * n,
            "correct": jnp.sum(correct(logits, batch["label"]) * mask),
            "count": n,
        }

    return eval_step


def _gathered_params(state: TrainState, mesh: Mesh, rules: ShardingRules | None) -> TrainState:
    """``state`` whose parameters are used gathered over ``fsdp`` where the mesh needs it.

    Only on meshes with ``fsdp`` and ``model`` both > 1, where XLA's partitioner
    miscomputed convolutions with kernels split on both (see :func:`gather_fsdp`).
    Elsewhere XLA's own gathers were right and cheaper: gathering everything at
    the top of the step took a ResNet-18's peak from 38 to 139 MiB per device
    on FSDP over 8 (docs/distributed.md, benchmarks/fsdp_gather.py).
    """
    if mesh.shape.get(MODEL_AXIS, 1) == 1:
        return state
    return state.replace(params=gather_fsdp({"params": state.params}, mesh, rules)["params"])


def jit_train_step(
    train_step: TrainStep,
    *,
    mesh: Mesh,
    state: Any = None,
    rules: ShardingRules | None = None,
) -> TrainStep:
    """Compiles ``train_step`` for ``mesh``: batch split on data/fsdp, donated state.

    Args:
      train_step: from :func:`make_train_step`.
      mesh: the device mesh (see :func:`archjax.parallel.make_mesh`).
      state: a (possibly abstract) train state, used only for its tree structure;
        ``None`` lets the state sharding be inferred from the input, which is
        already placed by :func:`archjax.train.create_train_state`. Pass it for
        FSDP or tensor parallelism, so that the new state keeps the layout.
      rules: logical-axis rules for the state (default
        :class:`archjax.parallel.ShardingRules`).

    Returns:
      The jitted step. Call it with global arrays from
      :func:`archjax.parallel.shard_batch`; the input state is donated (do not use
      it after the call). On meshes with ``fsdp`` and ``model`` both > 1 the
      parameters are gathered over ``fsdp`` at the top of the step
      (:func:`archjax.parallel.gather_fsdp`, an XLA workaround); parameters,
      optimizer state and batch keep their stored layouts.
    """
    state_sh = state_sharding(state, mesh, rules) if state is not None else None

    def sharded_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return train_step(_gathered_params(state, mesh, rules), batch)

    return jax.jit(
        sharded_step,
        in_shardings=(state_sh, data_sharding(mesh)),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(
    eval_step: Callable[[TrainState, Batch], Metrics],
    *,
    mesh: Mesh,
    rules: ShardingRules | None = None,
) -> Callable[[TrainState, Batch], Metrics]:
    """Compiles ``eval_step`` for ``mesh`` (batch split on the batch axes, no donation).

    The state keeps the layout it comes in; parameters split on ``fsdp`` (under
    ``rules``) are gathered at the top of the step as in :func:`jit_train_step`.
    """

    def sharded_eval_step(state: TrainState, batch: Batch) -> Metrics:
        return eval_step(_gathered_params(state, mesh, rules), batch)

    return jax.jit(
        sharded_eval_step, in_shardings=(None, data_sharding(mesh)), out_shardings=replicated(mesh)
    )
