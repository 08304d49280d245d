"""Convolutions with weight standardization (WS) and scaled WS.

- :class:`StdConv`: Weight Standardization (Qiao et al. 2019, "Micro-Batch
  Training with Batch-Channel Normalization and Weight Standardization"): each
  output channel's kernel is standardized to zero mean and unit variance
  before the convolution.
- :class:`ScaledStdConv`: Scaled WS of the Normalizer-Free networks (Brock et
  al. 2021a, "Characterizing signal propagation to close the performance gap
  in unnormalized ResNets"; Brock et al. 2021b, "High-Performance Large-Scale
  Image Recognition Without Normalization"): the standardized kernel is
  multiplied by ``gamma / sqrt(fan_in)`` and a learnable per-channel ``gain``.

Numerics follow timm's ``StdConv2d`` / ``ScaledStdConv2d`` (biased variance,
``(w - mean) / sqrt(var + eps)``); ``padding="SAME"`` is TensorFlow's SAME
(extra padding at the end), i.e. timm's ``*Same`` variants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch's kaiming_normal_(mode="fan_in", nonlinearity="linear"), as timm's NF nets use.
conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
Padding = str | int | Sequence[tuple[int, int]]


def standardize_kernel(
    kernel: jax.Array, *, eps: float, gain: jax.Array | None = None, scale: float = 1.0
) -> jax.Array:
    """Standardizes a kernel per output channel (the last axis).

    Args:
      kernel: ``[..., in, out]`` kernel (HWIO for convolutions).
      eps: added to the variance.
      gain: optional ``[out]`` multiplier.
      scale: constant multiplier (``gamma / sqrt(fan_in)`` for scaled WS).

    Returns:
      ``(kernel - mean) / sqrt(var + eps) * gain * scale``, mean and (biased)
      variance taken over every axis but the last.

    Example:
      >>> w = standardize_kernel(jnp.ones((3, 3, 4, 8)) + jnp.arange(8.0), eps=1e-6)
    """
    axes = tuple(range(kernel.ndim - 1))
    mean = jnp.mean(kernel, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(kernel - mean), axis=axes, keepdims=True)
    mult = jax.lax.rsqrt(var + eps) * scale
    if gain is not None:
        mult = mult * gain
    return (kernel - mean) * mult


def _conv(x, kernel, strides, padding, groups, dtype):
    """NHWC x HWIO convolution in ``dtype``."""
    nd = kernel.ndim - 2
    strides = (strides,) * nd if isinstance(strides, int) else tuple(strides)
    if isinstance(padding, int):
        padding = [(padding, padding)] * nd
    return jax.lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=strides,
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC") if nd == 2 else None,
        feature_group_count=groups,
    )


class _WSConvBase(nn.Module):
    """Fields and helpers shared by the two weight-standardized convolutions.

    Attributes:
      features: output channels.
      kernel_size: spatial kernel size.
      strides: convolution strides.
      padding: ``"SAME"`` (TensorFlow style), ``"VALID"``, an int (symmetric) or
        explicit ``[(lo, hi), ...]`` pairs.
      feature_group_count: grouped convolution.
      use_bias: add a learnable bias.
      eps: added to the kernel variance (timm's default 1e-6).
      kernel_init: initializer of the raw kernel.
      dtype: compute dtype; parameters stay float32.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    feature_group_count: int = 1
    use_bias: bool = False
    eps: float = 1e-6
    kernel_init: Any = conv_init
    dtype: Any = jnp.float32

    def _kernel(self, x) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1] // self.feature_group_count, self.features)
        return self.param("kernel", self.kernel_init, shape, jnp.float32)

    def _apply(self, x, kernel):
        y = _conv(x, kernel, self.strides, self.padding, self.feature_group_count, self.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
                self.dtype
            )
        return y


class StdConv(_WSConvBase):
    """Convolution with Weight Standardization (Qiao et al. 2019).

    Fields as :class:`ScaledStdConv` without ``gamma``/``gain_init``; no bias by default.
    """

    @nn.compact
    def __call__(self, x):
        return self._apply(x, standardize_kernel(self._kernel(x), eps=self.eps))


class ScaledStdConv(_WSConvBase):
    """Convolution with Scaled Weight Standardization (Brock et al. 2021a/b).

    The kernel used is ``standardize(w) * gain * gamma / sqrt(fan_in)`` with
    ``fan_in = prod(kernel_size) * in_channels / groups``; ``gamma`` is the
    activation's variance-preserving constant when it is folded into the
    convolution (timm's NF-ResNets) and 1 when the activation applies it
    (DeepMind's NFNets).

    Attributes:
      features: output channels.
      kernel_size: spatial kernel size.
      strides: convolution strides.
      padding: ``"SAME"`` (TensorFlow style), ``"VALID"``, an int (symmetric) or
        explicit ``[(lo, hi), ...]`` pairs.
      feature_group_count: grouped convolution.
      kernel_init: initializer of the raw kernel.
      dtype: compute dtype; parameters stay float32.
      gamma: constant multiplier of the standardized kernel.
      gain_init: initial value of the learnable per-channel ``gain``.
      use_bias: add a learnable bias (default ``True``, as in timm).
      eps: added to the kernel variance.
    """

    gamma: float = 1.0
    gain_init: float = 1.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self._kernel(x)
        gain = self.param(
            "gain", nn.initializers.constant(self.gain_init), (self.features,), jnp.float32
        )
        scale = self.gamma * math.prod(kernel.shape[:-1]) ** -0.5  # gamma / sqrt(fan_in)
        kernel = standardize_kernel(kernel, eps=self.eps, gain=gain, scale=scale)
        return self._apply(x, kernel)
