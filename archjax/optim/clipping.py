"""Gradient clipping pieces: AGC that skips the classifier, and Stable-SPAM spike clipping.

Both are ``optax.GradientTransformation``s meant to run first in an ``optax.chain``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import keystr

from archjax.tree_paths import check_pattern, match_path

# Every archjax classifier names its last Dense layer "head" (see archjax/models).
CLASSIFIER_PATTERN = r"^head/"


def path_mask(pattern: str, *, match: bool):
    """A mask function for ``optax.masked``: leaves whose "a/b/c" path matches ``pattern``.

    The path is ``jax.tree_util.keystr(path, simple=True, separator="/")`` and the
    match is :func:`archjax.tree_paths.match_path`, as for sharding and quantization rules.

    Args:
      pattern: a regex searched in each parameter path (``"head/kernel"``).
      match: the mask value for matching leaves (the others get ``not match``).

    Returns:
      ``params -> pytree of bools``.

    Example:
      >>> path_mask(r"^head/", match=False)({"head": {"kernel": w}, "conv": {"kernel": v}})
      {'conv': {'kernel': True}, 'head': {'kernel': False}}
    """
    check_pattern(pattern, field="path_mask")

    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: match_path(pattern, keystr(p, simple=True, separator="/")) == match,
            params,
        )

    return mask


def agc(
    clipping: float, *, eps: float = 1e-3, skip: str | None = CLASSIFIER_PATTERN
) -> optax.GradientTransformation:
    """Adaptive gradient clipping, unit-wise, leaving the classifier unclipped.

    Brock et al., "High-Performance Large-Scale Image Recognition Without
    Normalization" (2021): each unit (output row of a Dense kernel, output
    channel of a conv kernel; whole vector for 1-D parameters) with gradient norm
    ``||G||`` above ``clipping * max(||W||, eps)`` is rescaled to that norm. The
    paper does not clip the final linear layer; ``skip`` (a path regex) selects
    the parameters left alone. Built on ``optax.adaptive_grad_clip`` and
    ``optax.masked``.

    Args:
      clipping: the ratio ``lambda`` (0.01-0.16 in the paper, smaller for bigger batches).
      eps: floor of the parameter norm, so zero-initialised weights can move.
      skip: regex of parameter paths not to clip (``None`` clips everything).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> tx = optax.chain(agc(0.01), optax.sgd(0.1, momentum=0.9))
    """
    inner = optax.adaptive_grad_clip(clipping, eps=eps)
    if skip is None:
        return inner
    return optax.masked(inner, path_mask(skip, match=False))


class SpikeClipState(NamedTuple):
    """Running, bias-uncorrected mean of each leaf's largest gradient magnitude."""

    count: jax.Array
    threshold: Any


def spike_clip(decay: float = 0.999) -> optax.GradientTransformation:
    """Stable-SPAM's adaptive spike-aware clipping (AdaClip), per parameter tensor.

    Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
    Adam" (2025): with ``g_max = max|g|``, ``T_t = decay * T_{t-1} + (1 - decay) *
    g_max`` and ``T_hat = T_t / (1 - decay**t)``, every entry with ``|g| > T_hat``
    becomes ``g / g_max * T_hat``. (AdaGN and momentum reset, the paper's other two
    parts, are not included.)

    Args:
      decay: ``gamma`` of the running maximum (0.999 in the paper).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`SpikeClipState`.

    Example:
      >>> tx = optax.chain(spike_clip(), optax.adam(1e-3))
    """

    def init_fn(params):
        zeros = jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params)
        return SpikeClipState(jnp.zeros((), jnp.int32), zeros)

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        correction = 1.0 - decay ** count.astype(jnp.float32)

        thresholds = jax.tree.map(
            lambda g, t: decay * t + (1.0 - decay) * jnp.max(jnp.abs(g)).astype(jnp.float32),
            updates,
            state.threshold,
        )

        def clip(g, t):
            g_max = jnp.max(jnp.abs(g)).astype(jnp.float32)
            t_hat = t / correction
            scaled = g / jnp.maximum(g_max, 1e-30) * t_hat
            return jnp.where(jnp.abs(g) > t_hat, scaled, g).astype(g.dtype)

        new_updates = jax.tree.map(clip, updates, thresholds)
        return new_updates, SpikeClipState(count, thresholds)

    return optax.GradientTransformation(init_fn, update_fn)
