"""σReparam Dense (Zhai et al. 2023): power iteration and the train/eval state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from archjax.layers import SigmaReparamDense
from archjax.layers.sigma_reparam import power_iteration


def test_power_iteration_converges_to_spectral_norm():
    kernel = np.random.default_rng(0).normal(size=(48, 32)).astype(np.float32)
    true = np.linalg.norm(kernel, 2)
    u1 = power_iteration(jnp.asarray(kernel), jnp.ones(32), 1)
    u = power_iteration(jnp.asarray(kernel), jnp.ones(32), 300)
    assert float(jnp.linalg.norm(kernel @ u1)) <= true * (1 + 1e-6)  # a lower bound
    np.testing.assert_allclose(float(jnp.linalg.norm(kernel @ u)), true, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.linalg.norm(u)), 1.0, rtol=1e-6)


def test_sigma_reparam_dense_estimate_converges_in_train_mode_only():
    layer = SigmaReparamDense(24, init_power_iterations=0)
    x = jax.random.normal(jax.random.key(1), (4, 40))
    variables = layer.init(jax.random.key(0), x)
    true = np.linalg.norm(np.asarray(variables["params"]["kernel"]), 2)

    @jax.jit
    def train_step(stats):
        _, state = layer.clone(update_stats=True).apply(
            {**variables, "batch_stats": stats}, x, mutable=["batch_stats", "intermediates"]
        )
        return state["batch_stats"], state["intermediates"]["sigma"][0]

    stats, first = train_step(variables["batch_stats"])
    for _ in range(300):
        stats, sigma = train_step(stats)
    assert first < true
    np.testing.assert_allclose(float(sigma), true, rtol=1e-4)
    # Eval reads the state and never writes it.
    y, state = layer.apply({**variables, "batch_stats": stats}, x, mutable=["batch_stats"])
    chex.assert_trees_all_equal(state["batch_stats"], stats)
    # gamma = 1 at init: the effective weight has spectral norm 1.
    w_hat = np.asarray(variables["params"]["kernel"]) / float(sigma)
    np.testing.assert_allclose(np.linalg.norm(w_hat, 2), 1.0, rtol=1e-4)
    np.testing.assert_allclose(y, x @ w_hat + variables["params"]["bias"], rtol=1e-4, atol=1e-5)
