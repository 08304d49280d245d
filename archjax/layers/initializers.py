"""Kernel initializers: ZerO, (delta-)orthogonal, and timm's truncated normal.

Both follow the ``jax.nn.initializers`` signature ``init(key, shape, dtype)``
and the Flax kernel layouts: dense ``[in, out]``, convolution
``[*spatial, in, out]`` (HWIO).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Any  # (key, shape, dtype) -> jax.Array

# timm initializes every linear / conv of ViT, MLP-Mixer and ConvNeXt with a 0.02
# truncated normal; archjax's ports do the same so fresh models match timm's statistics.
trunc_normal = jax.nn.initializers.truncated_normal(0.02)


def _hadamard(m: int) -> np.ndarray:
    """Sylvester Hadamard matrix of size ``2**m``."""
    h = np.ones((1, 1))
    for _ in range(m):
        h = np.block([[h, h], [h, -h]])
    return h


def _zero_matrix(n_in: int, n_out: int) -> np.ndarray:
    """ZerO's ``[out, in]`` matrix (Zhao et al. 2022, Algorithm 1)."""
    if n_out <= n_in:
        return np.eye(n_out, n_in)  # identity, or partial identity I* when shrinking
    m = math.ceil(math.log2(n_out))
    c = 2.0 ** (-(m - 1) / 2)
    return c * _hadamard(m)[:n_out, :n_in]


def _center_embed(matrix: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Zeros of ``shape`` with ``matrix`` ([in, out]) at the spatial center."""
    center = tuple(k // 2 for k in shape[:-2])
    return jnp.zeros(shape, dtype).at[center].set(matrix.astype(dtype))


def zero_init() -> Initializer:
    """ZerO initialization (Zhao et al. 2022, "ZerO Initialization: Initializing
    Neural Networks with only Zeros and Ones").

    Deterministic; the key is ignored. For a kernel mapping ``n_in`` to
    ``n_out`` features:

    - ``n_in == n_out``: the identity;
    - ``n_out < n_in``: the partial identity ``I*`` (keeps the first ``n_out``
      inputs);
    - ``n_out > n_in``: ``c * H_m[:n_out, :n_in]`` with the Sylvester Hadamard
      matrix ``H_m`` of size ``2**m``, ``m = ceil(log2 n_out)`` and
      ``c = 2**(-(m-1)/2)``, so that distinct inputs stay distinct (Algorithm 1).

    Covered: dense kernels ``[in, out]`` and convolution kernels
    ``[*spatial, in, out]`` (the matrix sits at the spatial center, zeros
    elsewhere, so a stride-1 SAME convolution is the dense map applied per
    pixel; the paper's Algorithm 2). For a grouped convolution ``in`` is the
    per-group input count and each group gets the same matrix. Not covered:
    the paper's model-level rules (e.g. zeroing the last layer of each
    residual branch); apply those in the model.

    Returns:
      An initializer ``init(key, shape, dtype=jnp.float32)``.

    Example:
      >>> nn.Dense(64, kernel_init=zero_init())
    """

    def init(key, shape, dtype=jnp.float32):
        del key
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"zero_init needs a kernel of rank >= 2, got shape {shape}.")
        matrix = jnp.asarray(_zero_matrix(shape[-2], shape[-1]).T)  # Flax's [in, out]
        if len(shape) == 2:
            return matrix.astype(dtype)
        return _center_embed(matrix, shape, dtype)

    return init


def orthogonal(scale: float = 1.0) -> Initializer:
    """Orthogonal (Saxe et al. 2014) and delta-orthogonal (Xiao et al. 2018) init.

    Dense kernels ``[in, out]`` get a random (semi-)orthogonal matrix: ``W^T W =
    scale**2 I`` when ``in >= out``, ``W W^T = scale**2 I`` otherwise.
    Convolution kernels ``[*spatial, in, out]`` get the delta-orthogonal
    kernel of "Dynamical Isometry and a Mean Field Theory of CNNs": such a
    matrix at the spatial center and zeros elsewhere, so the convolution is
    norm preserving at initialization.

    Args:
      scale: multiplier of the orthogonal matrix.

    Returns:
      An initializer ``init(key, shape, dtype=jnp.float32)``.

    Example:
      >>> nn.Conv(64, (3, 3), kernel_init=orthogonal())
    """
    dense = jax.nn.initializers.orthogonal(scale)

    def init(key, shape, dtype=jnp.float32):
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a kernel of rank >= 2, got shape {shape}.")
        matrix = dense(key, shape[-2:], jnp.float32)
        if len(shape) == 2:
            return matrix.astype(dtype)
        return _center_embed(matrix, shape, dtype)

    return init
