"""Weight-standardized convolutions: standardized kernels and their numerics, under jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax.layers import ScaledStdConv, StdConv, standardize_kernel

X = jax.random.normal(jax.random.key(0), (2, 9, 9, 8))


def test_standardized_kernel_has_zero_mean_unit_variance_per_output_channel():
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 16)) * 5.0 + jnp.arange(16.0)
    ws = jax.jit(lambda w: standardize_kernel(w, eps=1e-10))(w)
    chex.assert_trees_all_close(ws.mean((0, 1, 2)), jnp.zeros(16), atol=1e-5)
    chex.assert_trees_all_close(ws.var((0, 1, 2)), jnp.ones(16), atol=1e-4)


def test_std_conv_is_invariant_to_per_channel_affine_kernel_changes():
    conv = StdConv(16, (3, 3), eps=1e-10)
    variables = conv.init(jax.random.key(1), X)
    k = variables["params"]["kernel"]
    moved = {"params": {"kernel": k * jnp.linspace(0.5, 4.0, 16) + 0.1 * jnp.arange(16.0)}}
    apply = jax.jit(conv.apply)
    chex.assert_trees_all_close(apply(variables, X), apply(moved, X), atol=1e-3)


@pytest.mark.parametrize("padding,strides,groups", [("SAME", 2, 1), (1, 1, 2), ("VALID", 1, 4)])
def test_scaled_std_conv_equals_manual_formula(padding, strides, groups):
    conv = ScaledStdConv(
        16, (3, 3), strides=strides, padding=padding, feature_group_count=groups, gamma=1.7
    )
    variables = conv.init(jax.random.key(1), X)
    p = dict(variables["params"])
    assert set(p) == {"kernel", "bias", "gain"}
    p["gain"] = jnp.linspace(0.5, 2.0, 16)
    p["bias"] = jnp.linspace(-1.0, 1.0, 16)
    y = jax.jit(conv.apply)({"params": p}, X)
    k = np.asarray(p["kernel"], np.float64)
    fan_in = 3 * 3 * 8 // groups
    k = (k - k.mean((0, 1, 2))) / np.sqrt(k.var((0, 1, 2)) + 1e-6) * np.asarray(p["gain"])
    k = k * 1.7 / np.sqrt(fan_in)
    pad = [(padding, padding)] * 2 if isinstance(padding, int) else padding
    want = (
        jax.lax.conv_general_dilated(
            X,
            jnp.asarray(k, jnp.float32),
            (strides, strides),
            pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )
        + p["bias"]
    )
    chex.assert_trees_all_close(y, want, atol=1e-5)


def test_scaled_std_conv_gain_init_zero_gives_bias_only():
    conv = ScaledStdConv(4, (1, 1), gain_init=0.0)
    variables = conv.init(jax.random.key(1), X)
    chex.assert_trees_all_equal(conv.apply(variables, X), jnp.zeros((2, 9, 9, 4)))


def test_bfloat16_compute_keeps_fp32_params():
    conv = ScaledStdConv(4, (3, 3), dtype=jnp.bfloat16)
    variables = conv.init(jax.random.key(1), X)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert conv.apply(variables, X).dtype == jnp.bfloat16
