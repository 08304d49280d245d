"""Exponential moving average of the parameters, kept in the optimizer state.

An optax transform that leaves the updates unchanged and tracks
``ema <- d * ema + (1 - d) * (params + updates)``, i.e. the average of the
parameters *after* each step. Living in ``opt_state`` means the train state,
the step, sharding and checkpoints need no change; put it last in the chain so
that ``updates`` are the final ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ParamEmaState(NamedTuple):
    """Number of updates seen and the averaged parameters."""

    count: jax.Array
    ema: Any


def ema_decay(decay: float, count: jax.Array, *, warmup: bool) -> jax.Array:
    """The decay used at update number ``count`` (1-based).

    With ``warmup`` the decay is ``min(decay, (1 + count) / (10 + count))``, the
    ``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage`` (used by
    EfficientNet and ResNet-RS), so that early averages are not dominated by the
    random initialisation.
    """
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    count = count.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + count) / (10.0 + count))


def ema_params(decay: float, *, warmup: bool = True) -> optax.GradientTransformation:
    """Tracks an EMA of the parameters in the optimizer state (Polyak & Juditsky, 1992).

    Args:
      decay: the EMA decay, e.g. 0.9999 (ResNet-RS) or 0.999 for short runs.
      warmup: use :func:`ema_decay`'s warmup.

    Returns:
      An ``optax.GradientTransformation`` whose updates are its inputs and whose
      state is :class:`ParamEmaState`; read the average with :func:`find_ema_params`.

    Example:
      >>> tx = optax.chain(optax.sgd(0.1), ema_params(0.999))
      >>> eval_params = find_ema_params(opt_state)
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")

    def init_fn(params):
        return ParamEmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.asarray, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("ema_params needs params: call tx.update(grads, state, params).")
        count = state.count + 1
        d = ema_decay(decay, count, warmup=warmup)
        ema = jax.tree.map(
            lambda e, p, u: (d * e + (1.0 - d) * (p + u)).astype(e.dtype),
            state.ema,
            params,
            updates,
        )
        return updates, ParamEmaState(count, ema)

    return optax.GradientTransformation(init_fn, update_fn)


def find_ema_params(opt_state: optax.OptState) -> Any | None:
    """The averaged parameters held by an :func:`ema_params` state inside ``opt_state``.

    Returns ``None`` if the optimizer has no EMA.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, ParamEmaState))
        if isinstance(s, ParamEmaState)
    ]
    if len(found) > 1:
        raise ValueError(f"opt_state holds {len(found)} ParamEmaState entries; expected one.")
    return found[0].ema if found else None
