"""Training with a mask: an optax wrapper that keeps pruned weights at exactly zero.

``keep_masked(inner, mask)`` wraps any optax optimizer. Each step it

1. zeroes the inner optimizer's moments at pruned positions (every params-shaped
   tree in the inner state, found by ``optax.tree_utils.tree_map_params``), so a
   mask that grew since the last step leaves no stale momentum behind;
2. feeds the inner optimizer gradients and parameters with pruned entries zeroed,
   so its moments, weight decay and trust ratios (LARS/LAMB) see the sparse network;
3. returns ``-params`` as the update of every pruned entry. ``p + (-p)`` is exactly
   0 in IEEE arithmetic (the update takes the wider of the two dtypes, so ``-p`` is
   never rounded), so after any step the pruned weights are exactly zero, even on
   the first step after pruning, and whatever the inner optimizer does there
   (weight decay would otherwise move them).

The mask lives in the optimizer state (:class:`MaskedState`), so it is saved and
restored with it; :func:`set_mask` replaces it when a gradual or iterative schedule
prunes more. Requires ``params`` in ``update`` (as weight decay does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class MaskedState(NamedTuple):
    """State of :func:`keep_masked`: the mask (True = kept) and the inner optimizer's state."""

    mask: Any
    inner_state: optax.OptState


def _is_masked_node(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def _zero_pruned(x, keep):
    """One params-shaped leaf of an optimizer state, zero where pruned.

    ``optax.masked`` (weight-decay masks) stores ``MaskedNode`` for leaves it skips;
    per-layer statistics (NovoGrad's scalar second moment) are not per weight and are
    left as they are (they are computed from the masked gradients).
    """
    if _is_masked_node(x) or jnp.shape(x) != jnp.shape(keep):
        return x
    return jnp.where(keep, x, jnp.zeros_like(x))


def _where(mask, tree):
    return jax.tree.map(lambda k, x: jnp.where(k, x, jnp.zeros_like(x)), mask, tree)


def keep_masked(
    inner: optax.GradientTransformation, mask: Any | Callable[[Any], Any]
) -> optax.GradientTransformation:
    """Wraps ``inner`` so that weights where ``mask`` is False stay exactly zero.

    Args:
      inner: any optax optimizer (sgd with momentum, adamw with weight decay, lamb...).
      mask: a pytree of bools beside the parameters, or a function ``params -> mask``
        evaluated at ``init``.

    Returns:
      An optax ``GradientTransformation`` whose state is a :class:`MaskedState`.

    Example:
      >>> tx = keep_masked(optax.adamw(1e-3, weight_decay=0.1), mask)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
    """

    def init_fn(params):
        if not jax.tree.leaves(params):
            # optax.tree_utils.tree_map_params runs init on a leafless placeholder to
            # find the params-shaped trees of a state; the mask is one of them.
            return MaskedState(mask=params, inner_state=inner.init(params))
        m = mask(params) if callable(mask) else mask
        m = jax.tree.map(lambda k, p: jnp.broadcast_to(jnp.asarray(k, bool), p.shape), m, params)
        return MaskedState(mask=m, inner_state=inner.init(params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("keep_masked needs params in update() to keep pruned weights at 0.")
        m = state.mask
        inner_state = optax.tree_utils.tree_map_params(
            inner,
            _zero_pruned,
            state.inner_state,
            m,
            transform_non_params=lambda x: x,
            is_leaf=_is_masked_node,
        )
        new, inner_state = inner.update(_where(m, updates), inner_state, _where(m, params))
        # No cast of -p to a narrower update dtype: p + (-p) must be exactly 0.
        new = jax.tree.map(lambda k, u, p: jnp.where(k, u, -p), m, new, params)
        return new, MaskedState(mask=m, inner_state=inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


masked_update = keep_masked  # the name the issue uses


def _is_masked(x) -> bool:
    return isinstance(x, MaskedState)


def set_mask(opt_state, mask):
    """``opt_state`` with the mask of every :class:`MaskedState` in it replaced by ``mask``.

    The next update zeroes the newly pruned weights and their moments.

    Example:
      >>> mask = global_magnitude(params, gradual_sparsity(step, ...), prunable=p)
      >>> opt_state = set_mask(opt_state, mask)
    """
    found = []

    def replace(x):
        if _is_masked(x):
            found.append(True)
            new = jax.tree.map(lambda k, o: jnp.asarray(k, bool).reshape(o.shape), mask, x.mask)
            return x._replace(mask=new)
        return x

    out = jax.tree.map(replace, opt_state, is_leaf=_is_masked)
    if not found:
        raise ValueError("set_mask: the optimizer state holds no keep_masked state.")
    return out


def get_mask(opt_state):
    """The mask of the (first) :class:`MaskedState` in ``opt_state``."""
    for x in jax.tree.leaves(opt_state, is_leaf=_is_masked):
        if _is_masked(x):
            return x.mask
    raise ValueError("get_mask: the optimizer state holds no keep_masked state.")
