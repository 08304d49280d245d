"""Shared by the supernet tests: variables that make BatchNorm and affine bugs visible."""

import jax
import jax.numpy as jnp


def noisy_variables(net, input_shape):
    """``net``'s variables with every 1-D leaf (BatchNorm statistics, scales, biases) moved
    off its init value (positive, so variances stay valid)."""
    v = net.init(jax.random.key(0), jnp.zeros(input_shape))
    leaves, tree = jax.tree.flatten(v)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [
        jnp.abs(x + 0.3 * jax.random.normal(k, x.shape)) if x.ndim == 1 else x
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, noisy)
