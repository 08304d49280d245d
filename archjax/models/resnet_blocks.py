"""Building blocks of the ResNet family: basic and bottleneck blocks, stochastic depth.

He et al., "Deep Residual Learning for Image Recognition" (2016); ResNet-B/D
tweaks from He et al., "Bag of Tricks for Image Classification" (2019); SE
(``archjax.layers.SqueezeExcite``) from Hu et al., "Squeeze-and-Excitation
Networks" (2018); stochastic depth from Huang et al., "Deep Networks with
Stochastic Depth" (2016). The ResNet module and its presets are in
:mod:`archjax.models.resnet`.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from archjax.layers import SqueezeExcite, drop_path, norm_layer

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Block(nn.Module):
    """Fields and the shortcut/SE/stochastic-depth tail shared by both block kinds."""

    features: int
    strides: int = 1
    residual: bool = True
    downsample: Literal["conv", "avg"] = "conv"
    se_ratio: float = 0.0
    drop_path_rate: float = 0.0
    norm: str = "batch"
    dtype: Any = jnp.float32

    def _norm(self, train: bool, name: str):
        return norm_layer(self.norm, train=train, dtype=self.dtype, name=name)

    def _conv(self, features: int, kernel: int, name: str, strides: int = 1):
        pad = (kernel - 1) // 2
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=strides,
            padding=pad,
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            name=name,
        )

    def _finish(self, x, y, train: bool):
        """SE on the branch, then stochastic depth, shortcut, ReLU (timm's order)."""
        out = y.shape[-1]
        if self.se_ratio > 0:
            y = SqueezeExcite(rd_ratio=self.se_ratio, dtype=self.dtype, name="se")(y)
        if not self.residual:
            return nn.relu(y)
        y = drop_path(self, y, self.drop_path_rate, train=train)
        if x.shape[-1] != out or self.strides != 1:
            if self.downsample == "avg" and self.strides != 1:
                # torch AvgPool2d(2, ceil_mode=True, count_include_pad=False): odd sizes
                # keep their last row/column, averaged over the valid pixels only.
                pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
                x = nn.avg_pool(x, (2, 2), (2, 2), padding=pad, count_include_pad=False)
                x = self._conv(out, 1, "downsample_conv")(x)
            else:
                x = self._conv(out, 1, "downsample_conv", strides=self.strides)(x)
            x = self._norm(train, "downsample_bn")(x)
        return nn.relu(x + y)


class BasicBlock(_Block):
    """Two 3x3 (``kernel_size``) convolutions; the block of ResNet-18/34 and the CIFAR
    ResNets."""

    kernel_size: int = 3

    @nn.compact
    def __call__(self, x, *, train: bool):
        k = self.kernel_size
        y = self._conv(self.features, k, "conv1", strides=self.strides)(x)
        y = nn.relu(self._norm(train, "bn1")(y))
        y = self._norm(train, "bn2")(self._conv(self.features, k, "conv2")(y))
        return self._finish(x, y, train)


class Bottleneck(_Block):
    """1x1 -> 3x3 -> 1x1 with 4x expansion; ResNet-50 and deeper.

    The stride sits in the 3x3 convolution ("v1.5", ResNet-B) unless
    ``stride_in_1x1`` (the original "v1" of He et al. 2016). ``inner_features``
    (default ``features``) is the width of the 1x1 and 3x3 convolutions; Wide
    ResNets double it while the block output stays ``4 * features``.
    """

    stride_in_1x1: bool = False
    inner_features: int | None = None
    expansion: int = 4

    @nn.compact
    def __call__(self, x, *, train: bool):
        inner = self.inner_features or self.features
        s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        y = nn.relu(self._norm(train, "bn1")(self._conv(inner, 1, "conv1", strides=s1)(x)))
        y = nn.relu(self._norm(train, "bn2")(self._conv(inner, 3, "conv2", strides=s3)(y)))
        y = self._norm(train, "bn3")(self._conv(self.features * self.expansion, 1, "conv3")(y))
        return self._finish(x, y, train)
