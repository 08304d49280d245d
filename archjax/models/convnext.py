"""ConvNeXt: a ResNet modernized towards the design of vision transformers.

Liu et al., "A ConvNet for the 2020s" (CVPR 2022). The layout is timm's
``ConvNeXt`` (so its weights import exactly): a 4x4/4 "patchify" stem conv and
LayerNorm; four stages, each but the first opened by LayerNorm + 2x2/2 conv;
blocks ``x + gamma * fc2(gelu(fc1(ln(dwconv7x7(x)))))`` with layer scale
``gamma`` initialized to 1e-6 (Touvron et al. 2021); global average pooling,
LayerNorm and a linear head (timm's head has its norm before the classifier).
LayerNorm epsilon is 1e-6. Stochastic depth, initialization and the epsilon
come from :mod:`archjax.layers`, as ViT's do.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from archjax.layers import LN_EPS, DropPath, trunc_normal
from archjax.models.registry import register
from archjax.models.torch_import import StateDictReader, register_converter


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv -> LayerNorm -> 4x MLP (GELU) -> layer scale, plus shortcut."""

    mlp_ratio: float = 4.0
    layer_scale_init: float = 1e-6
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        c = x.shape[-1]
        dense = functools.partial(nn.Dense, kernel_init=trunc_normal, dtype=self.dtype)
        y = nn.Conv(
            features=c, kernel_size=(7, 7), padding=3, feature_group_count=c,
            kernel_init=trunc_normal, dtype=self.dtype, name="conv_dw",
        )(x)  # fmt: skip
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(y)
        y = nn.gelu(dense(features=int(c * self.mlp_ratio), name="fc1")(y), approximate=False)
        y = dense(features=c, name="fc2")(y)
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (c,))
        drop_path = DropPath(rate=self.drop_path_rate)
        return x + drop_path(y * gamma.astype(self.dtype), train=train)


class ConvNeXt(nn.Module):
    """A ConvNeXt for NHWC images.

    Attributes:
      depths: number of blocks in each of the four stages (depth knob).
      dims: stage widths before ``width_multiplier``.
      width_multiplier: multiplies every stage width (width knob).
      mlp_ratio: block MLP hidden size / width.
      layer_scale_init: initial value of the per-channel layer scale.
      num_classes: size of the classifier output.
      drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
      dtype: computation dtype; parameters are kept in float32, logits are float32.
    """

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    width_multiplier: float = 1.0
    mlp_ratio: float = 4.0
    layer_scale_init: float = 1e-6
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        if x.ndim != 4:
            raise ValueError(f"ConvNeXt expects NHWC images, got shape {x.shape}.")
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {self.depths} and dims {self.dims} differ in length.")
        dims = [max(1, round(d * self.width_multiplier)) for d in self.dims]
        norm = functools.partial(nn.LayerNorm, epsilon=LN_EPS, dtype=self.dtype)
        conv = functools.partial(
            nn.Conv, padding="VALID", kernel_init=trunc_normal, dtype=self.dtype
        )
        x = conv(features=dims[0], kernel_size=(4, 4), strides=4, name="stem_conv")(
            x.astype(self.dtype)
        )
        x = norm(name="stem_norm")(x)
        total, done = sum(self.depths), 0
        for i, (depth, dim) in enumerate(zip(self.depths, dims, strict=True)):
            if i > 0:
                x = norm(name=f"stage{i}_downsample_norm")(x)
                x = conv(
                    features=dim, kernel_size=(2, 2), strides=2, name=f"stage{i}_downsample_conv"
                )(x)
            for j in range(depth):
                x = ConvNeXtBlock(
                    mlp_ratio=self.mlp_ratio,
                    layer_scale_init=self.layer_scale_init,
                    drop_path_rate=self.drop_path_rate * (done + j) / max(1, total - 1),
                    dtype=self.dtype,
                    name=f"stage{i}_block{j}",
                )(x, train=train)
            done += depth
        x = norm(name="head_norm")(jnp.mean(x, axis=(1, 2)))
        x = nn.Dense(
            features=self.num_classes, kernel_init=trunc_normal, dtype=self.dtype, name="head"
        )(x)
        return x.astype(jnp.float32)


_TINY = dict(depths=(1, 1, 1, 1), width_multiplier=1 / 8)
register("convnext_tiny", tiny=_TINY)(functools.partial(ConvNeXt, depths=(3, 3, 9, 3)))
register("convnext_small", tiny=_TINY)(functools.partial(ConvNeXt, depths=(3, 3, 27, 3)))


@register_converter(r"convnext_(tiny|small)")
def _from_torch(arrays: Mapping[str, np.ndarray], name: str) -> dict:
    """timm ``ConvNeXt`` state dict -> variables."""
    read = StateDictReader(arrays)
    params = {
        "stem_conv": {"kernel": read.conv("stem.0.weight"), "bias": read("stem.0.bias")},
        "stem_norm": read.layer_norm("stem.1"),
        "head_norm": read.layer_norm("head.norm"),
        "head": read.linear("head.fc"),
    }
    i = 0
    while f"stages.{i}.blocks.0.gamma" in arrays:
        if i > 0:
            params[f"stage{i}_downsample_norm"] = read.layer_norm(f"stages.{i}.downsample.0")
            params[f"stage{i}_downsample_conv"] = {
                "kernel": read.conv(f"stages.{i}.downsample.1.weight"),
                "bias": read(f"stages.{i}.downsample.1.bias"),
            }
        j = 0
        while f"stages.{i}.blocks.{j}.gamma" in arrays:
            t = f"stages.{i}.blocks.{j}"
            params[f"stage{i}_block{j}"] = {
                # Depthwise torch weight [C, 1, 7, 7] -> Flax [7, 7, 1, C].
                "conv_dw": {
                    "kernel": read.conv(f"{t}.conv_dw.weight"),
                    "bias": read(f"{t}.conv_dw.bias"),
                },
                "norm": read.layer_norm(f"{t}.norm"),
                "fc1": read.linear(f"{t}.mlp.fc1"),
                "fc2": read.linear(f"{t}.mlp.fc2"),
                "gamma": read(f"{t}.gamma"),
            }
            j += 1
        i += 1
    read.check_all_used()
    return {"params": params}
