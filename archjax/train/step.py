"""Pure train and eval steps, and their sharded ``jax.jit`` compilation.

``make_train_step`` returns a pure function ``(state, batch) -> (state, metrics)``
with no knowledge of devices; ``jit_train_step`` compiles it for a mesh with the
batch split on the ``data`` axis and the state donated, so the old state's
buffers are reused for the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from archjax.parallel import ShardingRules, data_sharding, replicated
from archjax.train.losses import correct, cross_entropy
from archjax.train.state import TrainState, state_sharding

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, *, label_smoothing: float = 0.0
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds the pure SGD step for a classifier.

    Args:
      model: a Flax module called as ``model(images, train=True)`` returning logits.
      tx: the optax optimizer whose state is ``state.opt_state``.
      label_smoothing: label-smoothing ``eps`` of the cross-entropy.

    Returns:
      ``train_step(state, batch) -> (new_state, metrics)`` where ``batch`` has
      ``"image"`` ``[B, H, W, C]`` and ``"label"`` ``[B]``, and metrics are scalars
      ``loss``, ``accuracy`` and ``grad_norm`` averaged over the global batch.

    Example:
      >>> step = jit_train_step(make_train_step(model, tx), mesh=mesh)
      >>> state, metrics = step(state, shard_batch(batch, mesh))
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            variables = {**state.variables(), "params": params}
            logits, updates = model.apply(
                variables,
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            loss = cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
            return loss, (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, param_updates),
            batch_stats=updates.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(correct(logits, batch["label"])),
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, Batch], Metrics]:
    """Builds the pure eval step: sums over the batch, so that batches can be added up.

    Returns:
      ``eval_step(state, batch) -> {"loss_sum", "correct", "count"}``. If the batch
      has a ``"mask"`` (1 = real example, 0 = padding) padded examples count zero.
    """

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        logits = model.apply(state.variables(), batch["image"], train=False)
        mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
        n = jnp.sum(mask)
        loss = cross_entropy(logits, batch["label"], mask=mask)
        return {
            "loss_sum": loss * n,
            "correct": jnp.sum(correct(logits, batch["label"]) * mask),
            "count": n,
        }

    return eval_step


def jit_train_step(
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
    *,
    mesh: Mesh,
    state: Any = None,
    rules: ShardingRules | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
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
      it after the call).
    """
    state_sh = state_sharding(state, mesh, rules) if state is not None else None
    return jax.jit(
        train_step,
        in_shardings=(state_sh, data_sharding(mesh)),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(
    eval_step: Callable[[TrainState, Batch], Metrics], *, mesh: Mesh
) -> Callable[[TrainState, Batch], Metrics]:
    """Compiles ``eval_step`` for ``mesh`` (batch split on ``data``, no donation)."""
    return jax.jit(
        eval_step, in_shardings=(None, data_sharding(mesh)), out_shardings=replicated(mesh)
    )
