"""σReparam Dense layers (Zhai et al., "Stabilizing Transformer Training by Preventing
Attention Entropy Collapse", ICML 2023) and the Dense factory transformer blocks use.

``W_hat = gamma / sigma(W) * W`` with ``sigma(W)`` estimated by power iteration;
see :class:`SigmaReparamDense`. :func:`transformer_dense` builds either that layer
or a plain ``nn.Dense`` with timm's 0.02 truncated-normal initialization, so the
attention and MLP blocks switch between the two with one flag.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from archjax.layers.initializers import trunc_normal


def _normalize(v: jax.Array) -> jax.Array:
    return v * jax.lax.rsqrt(jnp.sum(v * v) + 1e-24)


@functools.partial(jax.jit, static_argnames="num_iterations")  # compiled once per shape
def power_iteration(kernel: jax.Array, u: jax.Array, num_iterations: int) -> jax.Array:
    """Power iteration for the top right singular vector of a Flax kernel.

    Args:
      kernel: ``[in, out]`` Dense kernel (torch's weight transposed; same singular values).
      u: ``[out]`` current estimate (any non-zero vector).
      num_iterations: number of ``u <- normalize(K^T normalize(K u))`` steps.

    Returns:
      The new unit-norm estimate, without gradient.

    Example:
      >>> u = power_iteration(kernel, jnp.ones(kernel.shape[1]), 50)
      >>> sigma = jnp.linalg.norm(kernel @ u)  # ~ np.linalg.norm(kernel, 2)
    """
    kernel = jax.lax.stop_gradient(kernel)
    body = lambda _, u: _normalize(kernel.T @ _normalize(kernel @ u))
    return jax.lax.fori_loop(0, num_iterations, body, _normalize(jax.lax.stop_gradient(u)))


class SigmaReparamDense(nn.Module):
    """Dense layer with σReparam: ``y = x @ (gamma / sigma(W) * W) + b`` (Zhai et al. 2023).

    ``sigma(W) = ||W u||`` where ``u`` is the power-iteration estimate of the top
    right singular vector; gradient flows through ``W`` but not through ``u``.
    ``u`` lives in the ``batch_stats`` collection under ``sigma_u`` (not a
    parameter; the train step, ``TrainState`` and checkpoints already carry that
    collection). It is set by ``init_power_iterations`` steps at init and moved by
    ``n_power_iterations`` steps per call only when ``update_stats`` (train mode)
    and ``batch_stats`` is mutable; in eval it is read, never written. ``gamma``
    is a learned scalar initialized to 1, so at init ``W_hat`` has spectral norm 1.

    Attributes:
      features: output size.
      update_stats: advance the power iteration (train mode).
      n_power_iterations: power-iteration steps per training call (the paper uses 1).
      init_power_iterations: steps taken at init, so the first estimate is accurate.
      dtype: computation dtype; parameters stay float32.
    """

    features: int
    update_stats: bool = False
    n_power_iterations: int = 1
    init_power_iterations: int = 20
    dtype: Any = jnp.float32
    kernel_init: Callable = trunc_normal

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        gamma = self.param("gamma", nn.initializers.ones, (), jnp.float32)

        def init_u():
            u0 = jax.random.normal(self.make_rng("params"), (self.features,), jnp.float32)
            return power_iteration(kernel, u0, self.init_power_iterations)

        u = self.variable("batch_stats", "sigma_u", init_u)
        u_now = u.value
        if self.update_stats and not self.is_initializing():
            u_now = power_iteration(kernel, u_now, self.n_power_iterations)
            if self.is_mutable_collection("batch_stats"):
                u.value = u_now
        sigma = jnp.linalg.norm(kernel @ u_now)
        self.sow("intermediates", "sigma", sigma)
        w = (gamma / sigma) * kernel
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype)) + bias.astype(self.dtype)


def transformer_dense(
    features: int, name: str, *, sigma_reparam: bool, train: bool, dtype: Any
) -> nn.Module:
    """A σReparam Dense (``sigma_reparam``) or a plain Dense, both timm-initialized."""
    if sigma_reparam:
        return SigmaReparamDense(features=features, update_stats=train, dtype=dtype, name=name)
    return nn.Dense(features=features, dtype=dtype, kernel_init=trunc_normal, name=name)
