"""ZerO and (delta-)orthogonal initializers."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax.layers import orthogonal, zero_init


@pytest.mark.parametrize("shape", [(16, 16), (32, 8), (8, 32)])
def test_orthogonal_dense(shape):
    w = jax.jit(lambda k: orthogonal(scale=2.0)(k, shape))(jax.random.key(0))
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    chex.assert_trees_all_close(gram, 4.0 * jnp.eye(min(shape)), atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (5, 5, 8, 16), (3, 3, 16, 8)])
def test_delta_orthogonal_conv(shape):
    w = jax.jit(lambda k: orthogonal()(k, shape))(jax.random.key(0))
    center = w[shape[0] // 2, shape[1] // 2]
    gram = center.T @ center if shape[2] >= shape[3] else center @ center.T
    chex.assert_trees_all_close(gram, jnp.eye(min(shape[2:])), atol=1e-5)
    assert float(jnp.abs(w).sum() - jnp.abs(center).sum()) == 0.0  # zeros off-center
    if shape[2] <= shape[3]:  # norm preserving for a single pixel (no padding effects)
        x = jax.random.normal(jax.random.key(1), (2, 1, 1, shape[2]))
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        chex.assert_trees_all_close(
            jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
        )


def test_zero_init_square_dense_and_conv_are_identity():
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 16))
    dense = nn.Dense(16, kernel_init=zero_init())
    y = jax.jit(dense.apply)(dense.init(jax.random.key(1), x), x)
    chex.assert_trees_all_close(y, x)
    conv = nn.Conv(16, (3, 3), padding="SAME", kernel_init=zero_init())
    y = jax.jit(conv.apply)(conv.init(jax.random.key(1), x), x)
    chex.assert_trees_all_close(y, x)


def test_zero_init_shrinking_keeps_leading_features():
    x = jax.random.normal(jax.random.key(0), (3, 16))
    w = zero_init()(None, (16, 8))
    chex.assert_trees_all_close(x @ w, x[:, :8])


@pytest.mark.parametrize("n_in,n_out", [(4, 16), (8, 32), (3, 12)])
def test_zero_init_expanding_is_scaled_hadamard_and_injective(n_in, n_out):
    w = np.asarray(zero_init()(None, (n_in, n_out)))
    m = int(np.ceil(np.log2(n_out)))
    c = 2.0 ** (-(m - 1) / 2)
    np.testing.assert_allclose(np.abs(w), c, rtol=1e-6)  # only +-c entries
    assert np.linalg.matrix_rank(w) == n_in  # distinct inputs stay distinct
    if n_out == 2**m:  # full Hadamard columns are orthogonal
        np.testing.assert_allclose(w @ w.T, c**2 * n_out * np.eye(n_in), atol=1e-6)


def test_initializers_reject_vectors():
    with pytest.raises(ValueError, match="rank >= 2"):
        zero_init()(None, (4,))
    with pytest.raises(ValueError, match="rank >= 2"):
        orthogonal()(jax.random.key(0), (4,))
