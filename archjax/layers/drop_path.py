"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth")."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_path(module: nn.Module, y: jax.Array, rate: float, *, train: bool) -> jax.Array:
    """Stochastic depth: drops a residual branch per example (Huang et al. 2016).

    Kept branches are scaled by ``1 / (1 - rate)`` as in timm's ``DropPath``, so
    evaluation needs no rescaling. Draws from the ``"dropout"`` rng of ``module``,
    and only when ``train`` is true and ``rate > 0``.

    Args:
      module: the (bound) module whose ``"dropout"`` rng stream is used.
      y: the residual branch, ``[batch, ...]``.
      rate: probability of dropping the branch of an example.
      train: whether the model is training.

    Returns:
      ``y`` with the branch of some examples zeroed (train) or ``y`` unchanged.

    Example:
      >>> y = drop_path(self, y, 0.1, train=True)  # inside a compact module
    """
    if not train or rate == 0.0:
        return y
    keep = 1.0 - rate
    mask = jax.random.bernoulli(
        module.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1)
    )
    return jnp.where(mask, y / keep, jnp.zeros_like(y))


class DropPath(nn.Module):
    """:func:`drop_path` as a submodule, for blocks written with submodules."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return drop_path(self, x, self.rate, train=train)
