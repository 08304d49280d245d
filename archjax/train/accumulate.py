"""Gradient accumulation over micro-batches inside one step.

A gradient function here has the signature of ``jax.value_and_grad(loss_fn,
has_aux=True)``: ``grad_fn(params, batch, rng) -> ((loss, aux), grads)``, where
``loss`` is a mean over the batch and every leaf of ``aux`` is a per-batch mean
(metrics, BatchNorm statistics). :func:`accumulate_gradients` wraps such a
function so that the batch is processed in ``k`` equal micro-batches by
``lax.scan`` (one micro-batch of activations in memory at a time) and the mean
of their losses, aux and gradients is returned: for a loss that is a mean over
examples this *equals* the full-batch gradient.

Micro-batch ``i`` takes every ``k``-th example, starting at ``i`` (not a
contiguous block): a batch split over devices on its leading axis (``data``)
is then split on each device without moving data, and the per-device step
(``shard_map``/``pmap``, where each device splits its own slice the same way)
forms the very same micro-batches as the global ``jax.jit`` step.

BatchNorm: each micro-batch is normalised with its own statistics, as a
smaller per-device batch would be ("ghost batch norm", Hoffer et al. 2017), so a
BN model's gradient differs from the full-batch one by design; the running
statistics are updated once per step with the mean of the micro-batches'
updated statistics (the mean of the batch means equals the full-batch mean;
the variance is the mean of the micro-batch variances).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

GradFn = Callable[[Any, dict, jax.Array], tuple[tuple[jax.Array, Any], Any]]


def split_batch(
    batch: dict,
    k: int,
    *,
    parts: str = "micro-batches (config.microbatches / sam_groups must divide the batch size)",
) -> dict:
    """Reshapes every ``[B, ...]`` array of ``batch`` to ``[k, B // k, ...]``.

    ``parts`` names the pieces in the error raised when ``k`` does not divide ``B``.
    """

    def split(x):
        if x.shape[0] % k:
            raise ValueError(
                f"Batch of {x.shape[0]} examples cannot be split into {k} equal {parts}."
            )
        return x.reshape(k, x.shape[0] // k, *x.shape[1:])

    return jax.tree.map(split, batch)


def _strided_microbatches(batch: dict, k: int) -> dict:
    """``[B, ...]`` -> ``[k, B // k, ...]`` where micro-batch ``i`` is ``batch[i::k]``."""
    blocks = split_batch(batch, k)  # [k, B // k, ...]; raises if k does not divide B
    # The same memory read as [B // k, k, ...]; swapping the axes gives batch[i::k] at i.
    return jax.tree.map(lambda x: x.reshape(-1, k, *x.shape[2:]).swapaxes(0, 1), blocks)


def accumulate_gradients(grad_fn: GradFn, num_microbatches: int) -> GradFn:
    """Wraps ``grad_fn`` to average over ``num_microbatches`` equal micro-batches.

    Args:
      grad_fn: ``(params, batch, rng) -> ((loss, aux), grads)`` with mean-reduced outputs.
      num_microbatches: ``k``; must divide the batch size. 1 returns ``grad_fn``.

    Returns:
      A gradient function of the same signature. Micro-batch ``i`` is
      ``batch[i::k]`` and gets ``jax.random.fold_in(rng, i)``.

    Example:
      >>> grad_fn = accumulate_gradients(jax.value_and_grad(loss_fn, has_aux=True), 4)
      >>> (loss, aux), grads = grad_fn(params, batch, rng)  # == full batch for mean losses
    """
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}.")
    if num_microbatches == 1:
        return grad_fn
    k = num_microbatches

    def accumulated(params, batch, rng):
        micro = _strided_microbatches(batch, k)

        def body(total, xs):
            i, mb = xs
            out = grad_fn(params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, total, out), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(grad_fn, params, first, rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
        return jax.tree.map(lambda t: t / k, total)

    return accumulated
