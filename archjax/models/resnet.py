"""ResNet family: CIFAR-style ResNet-{20,32,56} and ImageNet-style ResNet-{18,34,50}.

He et al., "Deep Residual Learning for Image Recognition" (2016). The ImageNet
variants follow the common "v1.5" layout (stride in the 3x3 convolution of a
bottleneck, as in torchvision); shortcuts that change shape are 1x1 projections
(option B). CIFAR variants use a 3x3 stem with no pooling and widths 16/32/64.

Knobs that a scaling study turns are module fields: ``stage_sizes`` (depth),
``width_multiplier`` (width), ``num_classes``, ``residual`` (``False`` gives the
"plain" network of the paper), ``dtype`` (compute dtype; parameters stay fp32).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from archjax.models.registry import register
from archjax.models.torch_import import StateDictReader, register_converter

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the block of ResNet-18/34 and the CIFAR ResNets."""

    features: int
    strides: int = 1
    residual: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype)
        y = conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
        y = norm(name="bn2")(y)
        if not self.residual:
            return nn.relu(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv(self.features, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 with 4x expansion; ResNet-50 and deeper."""

    features: int
    strides: int = 1
    residual: bool = True
    dtype: Any = jnp.float32
    expansion: int = 4

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype)
        out = self.features * self.expansion
        y = nn.relu(norm(name="bn1")(conv(self.features, (1, 1), name="conv1")(x)))
        y = conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = norm(name="bn3")(conv(out, (1, 1), name="conv3")(y))
        if not self.residual:
            return nn.relu(y)
        if x.shape[-1] != out or self.strides != 1:
            x = conv(out, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet for NHWC images.

    Attributes:
      stage_sizes: number of blocks in each stage (depth knob).
      block: "basic" (two 3x3 convs) or "bottleneck" (1x1-3x3-1x1, 4x expansion).
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv).
      base_width: width of the first stage before ``width_multiplier``.
      width_multiplier: multiplies every stage width (width knob).
      num_classes: size of the classifier output.
      residual: ``False`` removes every shortcut (the "plain" baseline).
      dtype: computation dtype; parameters are kept in float32.
    """

    stage_sizes: Sequence[int]
    block: Literal["basic", "bottleneck"] = "basic"
    stem: Literal["imagenet", "cifar"] = "imagenet"
    base_width: int = 64
    width_multiplier: float = 1.0
    num_classes: int = 1000
    residual: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}.")
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
        if x.ndim != 4:
            raise ValueError(f"ResNet expects NHWC images, got shape {x.shape}.")
        width = lambda w: max(1, int(round(w * self.width_multiplier)))
        x = x.astype(self.dtype)
        stem_width = width(self.base_width)
        if self.stem == "imagenet":
            x = nn.Conv(
                stem_width,
                (7, 7),
                strides=2,
                padding=3,
                use_bias=False,
                kernel_init=_conv_init,
                dtype=self.dtype,
                name="stem_conv",
            )(x)
        else:
            x = nn.Conv(
                stem_width,
                (3, 3),
                padding=1,
                use_bias=False,
                kernel_init=_conv_init,
                dtype=self.dtype,
                name="stem_conv",
            )(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, dtype=self.dtype, name="stem_bn"
        )(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block_cls = BasicBlock if self.block == "basic" else Bottleneck
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = block_cls(
                    features=width(self.base_width * 2**i),
                    strides=2 if i > 0 and j == 0 else 1,
                    residual=self.residual,
                    dtype=self.dtype,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def _cifar(depth: int, **kwargs) -> ResNet:
    """CIFAR ResNet of depth 6n+2 (He et al. 2016, Sec. 4.2)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
    n = (depth - 2) // 6
    defaults = dict(
        stage_sizes=(n, n, n), block="basic", stem="cifar", base_width=16, num_classes=10
    )
    return ResNet(**{**defaults, **kwargs})


def _imagenet(stage_sizes: Sequence[int], block: str, **kwargs) -> ResNet:
    defaults = dict(stage_sizes=tuple(stage_sizes), block=block, stem="imagenet", base_width=64)
    return ResNet(**{**defaults, **kwargs})


for _depth in (8, 20, 32, 56):
    register(f"resnet{_depth}")(functools.partial(_cifar, _depth))
register("resnet18")(functools.partial(_imagenet, (2, 2, 2, 2), "basic"))
register("resnet34")(functools.partial(_imagenet, (3, 4, 6, 3), "basic"))
register("resnet50")(functools.partial(_imagenet, (3, 4, 6, 3), "bottleneck"))


@register_converter(r"resnet(18|34|50)")
def _from_torch(arrays, name: str) -> dict:
    """torchvision/timm ``resnet{18,34,50}`` state dict -> variables (same layer order)."""
    read = StateDictReader(arrays)
    params, stats = {}, {}

    def bn(torch_key: str, flax_scope: dict, stats_scope: dict, name: str) -> None:
        flax_scope[name] = {"scale": read(f"{torch_key}.weight"), "bias": read(f"{torch_key}.bias")}
        stats_scope[name] = {
            "mean": read(f"{torch_key}.running_mean"),
            "var": read(f"{torch_key}.running_var"),
        }

    params["stem_conv"] = {"kernel": read.conv("conv1.weight")}
    bn("bn1", params, stats, "stem_bn")
    block = "bottleneck" if name == "resnet50" else "basic"
    num_convs = 3 if block == "bottleneck" else 2
    stage = 1
    while f"layer{stage}.0.conv1.weight" in arrays:
        j = 0
        while f"layer{stage}.{j}.conv1.weight" in arrays:
            prefix, scope = f"layer{stage}.{j}", f"stage{stage}_block{j + 1}"
            p, s = params.setdefault(scope, {}), stats.setdefault(scope, {})
            for c in range(1, num_convs + 1):
                p[f"conv{c}"] = {"kernel": read.conv(f"{prefix}.conv{c}.weight")}
                bn(f"{prefix}.bn{c}", p, s, f"bn{c}")
            if f"{prefix}.downsample.0.weight" in arrays:
                p["downsample_conv"] = {"kernel": read.conv(f"{prefix}.downsample.0.weight")}
                bn(f"{prefix}.downsample.1", p, s, "downsample_bn")
            j += 1
        stage += 1
    params["head"] = {"kernel": read.dense("fc.weight"), "bias": read("fc.bias")}
    read.check_all_used()
    return {"params": params, "batch_stats": stats}
