"""Losses and metrics on logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean softmax cross-entropy with optional label smoothing.

    Label smoothing follows Szegedy et al., "Rethinking the Inception Architecture"
    (2016): the target is ``(1 - eps) * onehot + eps / num_classes``.

    Args:
      logits: ``[batch, num_classes]``.
      labels: integer class ids ``[batch]``.
      label_smoothing: ``eps`` in ``[0, 1)``.
      mask: optional ``[batch]`` weights (1 = real example, 0 = padding).

    Returns:
      Scalar mean loss over the (masked) batch.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    if mask is None:
        return jnp.mean(losses)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example 1.0 where the arg-max of ``logits`` equals ``labels``, else 0.0."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Top-1 accuracy of ``logits`` against integer ``labels``."""
    return jnp.mean(correct(logits, labels))
