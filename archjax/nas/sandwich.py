"""Supernet training with the sandwich rule and in-place distillation (BigNAS).

Each step trains the largest child on the labels and the smallest plus
``num_random`` random children on the largest child's predictions (in-place
distillation; ``distill=False``: on the labels), and applies the sum of their
gradients in one optimizer update (Yu et al., 2020, "BigNAS"). The random children
are drawn inside the step from the state's key, so one compiled program serves
every step. With ``conflict=True`` the metrics include the cosine between the
largest and the smallest child's gradients, the gradient conflict that ElasticViT
(Tang et al., 2023) discusses.

The step has the signature of :func:`archjax.train.make_train_step`'s, ``(state,
batch) -> (state, metrics)`` on a :class:`archjax.train.TrainState`, so
:func:`archjax.train.jit_train_step` compiles it for any mesh. It is a separate
function because its objective is a sum over children with distillation targets,
not the classifier loss that the one train step's recipes modify. BatchNorm running
statistics follow the largest child only; re-estimate them per child before
evaluating it (:func:`recalibrate`).

Any supernet works: a Flax module called as ``net(x, child, train=...)`` whose
``space`` has ``largest()``, ``smallest()``, ``encode(arch)`` (a child as arrays),
``sample_encoding(key)`` (a random child, drawn on the device), ``num_classes`` and
``extract`` (:class:`archjax.nas.ResNetSpace`, :class:`archjax.nas.ViTSpace`). Every
child runs at the batch's resolution; a supernet without BatchNorm (the ViT) has
empty ``batch_stats``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from archjax.nas.supernet import extract
from archjax.train import TrainState


def _cosine(a, b) -> jax.Array:
    dot = sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    return dot / (optax.tree.norm(a) * optax.tree.norm(b) + 1e-12)


def make_sandwich_step(
    net: nn.Module,
    tx: optax.GradientTransformation,
    *,
    num_random: int = 2,
    distill: bool = True,
    conflict: bool = False,
):
    """The BigNAS supernet step ``(state, batch) -> (state, metrics)``.

    Args:
      net: the supernet (:class:`archjax.nas.SuperResNet`, :class:`archjax.nas.SuperViT`).
      tx: the optimizer of ``state.opt_state``.
      num_random: random children per step besides the largest and the smallest.
      distill: train the other children on the largest one's predictions.
      conflict: also report ``grad_cosine`` between the largest and the smallest child.

    Returns:
      The pure step. Metrics: ``loss`` and ``accuracy`` of the largest child,
      ``loss_smallest``, and ``grad_cosine`` if asked.

    Example:
      >>> state = create_train_state(net, tx, rng=key, input_shape=(1, 8, 8, 1))
      >>> step = jit_train_step(make_sandwich_step(net, tx), mesh=mesh)
    """
    if num_random < 0:
        raise ValueError(f"num_random must be >= 0, got {num_random}.")
    space = net.space
    largest, smallest = space.encode(space.largest()), space.encode(space.smallest())

    def step(state: TrainState, batch: dict[str, jax.Array]):
        images, labels = batch["image"], batch["label"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        randoms = [space.sample_encoding(k) for k in jax.random.split(key, num_random)]
        onehot = jax.nn.one_hot(labels, space.num_classes)

        def loss_of(params, child, targets):
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            logits, updates = net.apply(
                variables, images, child, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        (loss, (logits, batch_stats)), grads = grad_fn(state.params, largest, onehot)
        targets = jax.lax.stop_gradient(jax.nn.softmax(logits)) if distill else onehot
        (loss_small, _), grads_small = grad_fn(state.params, smallest, targets)
        total = jax.tree.map(jnp.add, grads, grads_small)
        for child in randoms:
            _, g = grad_fn(state.params, child, targets)
            total = jax.tree.map(jnp.add, total, g)
        updates, opt_state = tx.update(total, state.opt_state, state.params)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "loss_smallest": loss_small,
        }
        if conflict:
            metrics["grad_cosine"] = _cosine(grads, grads_small)
        new = state.apply_updates(updates, opt_state, batch_stats)
        return new, metrics

    return step


def recalibrate(
    space: Any, variables: Any, arch: Any, batches: Iterable[Any], *, num_batches: int = 20
) -> tuple[Any, Any]:
    """The child ``arch`` extracted with BatchNorm statistics re-estimated on ``batches``
    (BigNAS recalibrates each child before evaluating it); ``(model, variables)``."""
    from archjax.quant.ptq import reestimate_batch_stats  # the one BN re-estimation

    model, child = extract(space, variables, arch)
    return model, reestimate_batch_stats(model, child, batches, num_batches=num_batches)
