"""Squeeze-and-Excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks")."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Rounds ``v`` to a multiple of ``divisor`` (never below ``divisor`` nor ``round_limit * v``).

    The channel rounding of timm (and TF's MobileNet code), so that widths match timm's.
    """
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class SqueezeExcite(nn.Module):
    """Channel gating: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`` on NHWC input.

    Attributes:
      rd_ratio: reduced width as a fraction of the channels, rounded to a
        multiple of ``rd_divisor`` (timm's ``SEModule`` rule).
      rd_divisor: rounding of the reduced width.
      kernel_init: initializer of ``fc1``/``fc2``.
      dtype: compute dtype; parameters stay float32.
    """

    rd_ratio: float = 1 / 16
    rd_divisor: int = 8
    kernel_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        rd = make_divisible(c * self.rd_ratio, self.rd_divisor, round_limit=0.0)
        s = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        s = nn.Dense(rd, kernel_init=self.kernel_init, dtype=self.dtype, name="fc1")(s)
        s = nn.Dense(c, kernel_init=self.kernel_init, dtype=self.dtype, name="fc2")(nn.relu(s))
        return x * jax.nn.sigmoid(s).astype(x.dtype)
