"""Rewinding: the weights (and optimizer state) of an earlier step, with a mask applied.

Lottery tickets (Frankle & Carbin, 2019) rewind to initialization; Frankle et al.,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis" (2020) rewind to an
early step ``k``. The caller keeps the step-``k`` parameters and optimizer state
(in memory or in the run's checkpoints); this turns them into the start of the next
round: pruned weights and their optimizer moments are exactly zero, everything else
is bitwise the saved values.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from archjax.sparsity.criteria import apply_mask
from archjax.sparsity.masked import _is_masked, _is_masked_node, _zero_pruned


def rewind(
    saved_params,
    mask,
    *,
    opt_state: Any = None,
    optimizer: optax.GradientTransformation | None = None,
):
    """The saved parameters (and optimizer state) with ``mask`` applied.

    Args:
      saved_params: parameters of step ``k`` (or of initialization).
      mask: the current mask (True = kept).
      opt_state: the optimizer state saved at step ``k``; None rewinds parameters only.
      optimizer: the optimizer that made ``opt_state`` (needed to find its
        params-shaped moments); every :class:`archjax.sparsity.MaskedState` in the state
        gets ``mask`` as its mask.

    Returns:
      ``params``, or ``(params, opt_state)`` when ``opt_state`` is given.

    Example:
      >>> params, opt_state = rewind(params_k, mask, opt_state=state_k, optimizer=tx)
    """
    params = apply_mask(saved_params, mask)
    if opt_state is None:
        return params
    if optimizer is None:
        raise ValueError("rewind: pass optimizer= with opt_state= (to find its moments).")
    zeroed = optax.tree_utils.tree_map_params(
        optimizer,
        _zero_pruned,
        opt_state,
        mask,
        transform_non_params=lambda x: x,
        is_leaf=_is_masked_node,
    )

    def put_mask(x):
        if _is_masked(x):
            m = jax.tree.map(lambda k, o: jnp.asarray(k, bool).reshape(o.shape), mask, x.mask)
            return x._replace(mask=m)
        return x

    return params, jax.tree.map(put_mask, zeroed, is_leaf=_is_masked)
