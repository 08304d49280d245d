"""ResNet family: CIFAR ResNets, ImageNet ResNets v1/v1.5/B/C/D, Wide ResNets.

He et al., "Deep Residual Learning for Image Recognition" (2016) defines the
network ("v1": the stride of a bottleneck sits in its first 1x1 convolution) and
the CIFAR variants (depth 6n+2, 3x3 stem, widths 16/32/64). He et al., "Bag of
Tricks for Image Classification with Convolutional Neural Networks" (2019)
defines the tweaks that timm and torchvision use:

- ResNet-B ("v1.5", the default here, timm's and torchvision's ``resnet50``):
  the stride moves to the 3x3 convolution;
- ResNet-C (``stem="deep"``): the 7x7 stem becomes three 3x3 convolutions
  (widths ``stem_width, stem_width, 2 * stem_width``);
- ResNet-D (``downsample="avg"``): a shortcut that changes resolution is a 2x2
  average pool followed by a 1x1 convolution instead of a strided 1x1.

Zagoruyko & Komodakis, "Wide Residual Networks" (2016): ``bottleneck_multiplier``
widens the 3x3 convolution of every bottleneck (timm's ``wide_resnet50_2``).
Bello et al., "Revisiting ResNets: Improved Training and Scaling Strategies"
(2021): ResNet-RS is ResNet-D with squeeze-excitation (``se_ratio=0.25``), a
strided 3x3 convolution instead of the stem max-pool (``stem_pool="conv"``) and
stochastic depth (``drop_path_rate``; timm's presets default to 0 and so do
ours, the paper tunes it per model and resolution). Shortcuts that change shape
are projections (option B of He et al. 2016). The blocks are in
:mod:`archjax.models.resnet_blocks`.

Knobs that a scaling study turns are module fields: ``stage_sizes`` (depth),
``width_multiplier`` (width), ``num_classes``, ``residual`` (``False`` gives the
"plain" network of the paper), ``norm`` (any kind of :func:`archjax.layers.norm_layer`),
``dtype`` (compute dtype; parameters stay fp32).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from archjax.layers import NORM_KINDS, norm_layer
from archjax.models.registry import create, register
from archjax.models.resnet_blocks import BasicBlock, Bottleneck, conv_init
from archjax.models.torch_import import StateDictReader, register_converter


class ResNet(nn.Module):
    """A ResNet for NHWC images.

    Attributes:
      stage_sizes: number of blocks in each stage (depth knob).
      block: "basic" (two 3x3 convs) or "bottleneck" (1x1-3x3-1x1, 4x expansion).
      stem: "imagenet" (7x7/2 conv), "deep" (three 3x3 convs, the first strided;
        ResNet-C/D of He et al. 2019) or "cifar" (3x3/1 conv, no pooling).
      stem_width: width of the first two convolutions of the "deep" stem (the third
        has twice as many); unused by the other stems.
      stem_pool: how the "imagenet"/"deep" stems halve the resolution after the
        stem: "max" (3x3/2 max-pool) or "conv" (3x3/2 conv + BN + ReLU, ResNet-RS).
      base_width: width of the first stage (and of the "imagenet"/"cifar" stem)
        before ``width_multiplier``.
      width_multiplier: multiplies every width (width knob).
      bottleneck_multiplier: multiplies the width of the 1x1 and 3x3 convolutions
        inside a bottleneck (2 for Wide ResNet-50-2); the block output keeps 4x.
      stride_in_1x1: bottleneck stride in the first 1x1 conv ("v1") instead of the
        3x3 ("v1.5", ResNet-B, default).
      downsample: shortcut projection when the resolution halves: "conv" (strided
        1x1 conv) or "avg" (2x2 average pool + 1x1 conv, ResNet-D).
      se_ratio: squeeze-excitation reduction ratio in every block; 0 disables it.
      drop_path_rate: stochastic-depth rate of the last block, decaying linearly
        to 0 for the first (timm's rule); uses the "dropout" rng when training.
      norm: normalization after every convolution, a kind of
        :func:`archjax.layers.norm_layer` ("batch", "group", "layer", "none", ...).
      num_classes: size of the classifier output.
      residual: ``False`` removes every shortcut (the "plain" baseline).
      stage_widths: explicit width of each stage (``width_multiplier`` still applies),
        instead of ``base_width * 2**i``; the "cifar"/"imagenet" stem then has the
        first stage's width. The children of :mod:`archjax.nas` supernets use it.
      kernel_sizes: kernel size of the convolutions of each stage's basic blocks
        (default 3 everywhere; odd sizes).
      dtype: computation dtype; parameters are kept in float32.
    """

    stage_sizes: Sequence[int]
    block: Literal["basic", "bottleneck"] = "basic"
    stem: Literal["imagenet", "deep", "cifar"] = "imagenet"
    stem_width: int = 32
    stem_pool: Literal["max", "conv"] = "max"
    base_width: int = 64
    width_multiplier: float = 1.0
    bottleneck_multiplier: float = 1.0
    stride_in_1x1: bool = False
    downsample: Literal["conv", "avg"] = "conv"
    se_ratio: float = 0.0
    drop_path_rate: float = 0.0
    norm: str = "batch"
    num_classes: int = 1000
    residual: bool = True
    stage_widths: Sequence[int] | None = None
    kernel_sizes: Sequence[int] | None = None
    dtype: Any = jnp.float32

    def _check(self, x) -> None:
        allowed = {
            "block": ("basic", "bottleneck"),
            "stem": ("imagenet", "deep", "cifar"),
            "stem_pool": ("max", "conv"),
            "downsample": ("conv", "avg"),
            "norm": NORM_KINDS,
        }
        for field, values in allowed.items():
            if getattr(self, field) not in values:
                raise ValueError(f"{field} must be one of {values}, got {getattr(self, field)!r}.")
        for field in ("se_ratio", "drop_path_rate"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {getattr(self, field)}.")
        for field in ("stage_widths", "kernel_sizes"):
            value = getattr(self, field)
            if value is not None and len(value) != len(self.stage_sizes):
                raise ValueError(
                    f"{field} has {len(value)} entries for {len(self.stage_sizes)} stages."
                )
        if self.kernel_sizes is not None and (
            self.block != "basic" or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes)
        ):
            raise ValueError(
                f"kernel_sizes {tuple(self.kernel_sizes)} need basic blocks and odd sizes."
            )
        if x.ndim != 4:
            raise ValueError(f"ResNet expects NHWC images, got shape {x.shape}.")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        self._check(x)
        width = lambda w: max(1, int(round(w * self.width_multiplier)))
        stage_width = lambda i: (
            width(self.base_width * 2**i)
            if self.stage_widths is None
            else width(self.stage_widths[i])
        )
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
        norm = functools.partial(norm_layer, self.norm, train=train, dtype=self.dtype)
        x = x.astype(self.dtype)
        if self.stem == "deep":
            widths = (width(self.stem_width), width(self.stem_width), width(2 * self.stem_width))
            for i, w in enumerate(widths[:2]):
                x = conv(
                    w, (3, 3), strides=2 if i == 0 else 1, padding=1, name=f"stem_conv{i + 1}"
                )(x)
                x = nn.relu(norm(name=f"stem_bn{i + 1}")(x))
            x = conv(widths[2], (3, 3), padding=1, name="stem_conv3")(x)
        elif self.stem == "imagenet":
            x = conv(stage_width(0), (7, 7), strides=2, padding=3, name="stem_conv")(x)
        else:
            x = conv(stage_width(0), (3, 3), padding=1, name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        if self.stem != "cifar" and self.stem_pool == "max":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        elif self.stem != "cifar":
            x = conv(x.shape[-1], (3, 3), strides=2, padding=1, name="stem_pool_conv")(x)
            x = nn.relu(norm(name="stem_pool_bn")(x))

        total, index = sum(self.stage_sizes), 0
        for i, num_blocks in enumerate(self.stage_sizes):
            features = stage_width(i)
            extra = {}
            if self.kernel_sizes is not None:
                extra = dict(kernel_size=self.kernel_sizes[i])
            if self.block == "bottleneck":
                inner = int(features * self.bottleneck_multiplier)
                extra = dict(stride_in_1x1=self.stride_in_1x1, inner_features=inner)
            for j in range(num_blocks):
                block_cls = BasicBlock if self.block == "basic" else Bottleneck
                x = block_cls(
                    features=features,
                    strides=2 if i > 0 and j == 0 else 1,
                    residual=self.residual,
                    downsample=self.downsample,
                    se_ratio=self.se_ratio,
                    drop_path_rate=self.drop_path_rate * index / max(1, total - 1),
                    norm=self.norm,
                    dtype=self.dtype,
                    name=f"stage{i + 1}_block{j + 1}",
                    **extra,
                )(x, train=train)
                index += 1
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


def _imagenet(*, stage_sizes: Sequence[int], block: str, variant: str = "b", **kwargs) -> ResNet:
    """ImageNet ResNet; ``variant`` is "v1", "b" (v1.5), "c" or "d" (He et al. 2019)."""
    variants = {
        "v1": dict(stride_in_1x1=True),
        "b": {},
        "c": dict(stem="deep", stem_width=32),
        "d": dict(stem="deep", stem_width=32, downsample="avg"),
    }
    defaults = dict(stage_sizes=tuple(stage_sizes), block=block, stem="imagenet", base_width=64)
    return ResNet(**{**defaults, **variants[variant], **kwargs})


# Keyword arguments of the presets, so that ``create(name, stage_sizes=...)`` overrides them.
DEPTHS = {
    18: dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    34: dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    50: dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    101: dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
    152: dict(stage_sizes=(3, 8, 36, 3), block="bottleneck"),
    200: dict(stage_sizes=(3, 24, 36, 3), block="bottleneck"),
}
# Small enough that init + grad compiles in seconds (tests/models/test_all_models.py).
# Two stages cover both kinds of shortcut (stride 1 and stride 2) at half the compile time.
TINY_IMAGENET = {"stage_sizes": (1, 1), "width_multiplier": 1 / 16}
_TINY_CIFAR = {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25}

for _depth in (8, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}", tiny=_TINY_CIFAR)(functools.partial(_cifar, _depth))
# timm's names: a letter suffix is the Bag-of-Tricks variant; no suffix is ResNet-B.
for _name, _depth, _variant in [
    ("resnet18", 18, "b"),
    ("resnet18d", 18, "d"),
    ("resnet34", 34, "b"),
    ("resnet34d", 34, "d"),
    ("resnet50", 50, "b"),
    ("resnet50_v1", 50, "v1"),  # not in timm: the stride-in-1x1 original
    ("resnet50c", 50, "c"),
    ("resnet50d", 50, "d"),
    ("resnet101", 101, "b"),
    ("resnet101d", 101, "d"),
    ("resnet152", 152, "b"),
    ("resnet152d", 152, "d"),
    ("resnet200", 200, "b"),
    ("resnet200d", 200, "d"),
]:
    register(_name, tiny=TINY_IMAGENET)(
        functools.partial(_imagenet, **DEPTHS[_depth], variant=_variant)
    )
for _depth in (50, 101):
    register(f"wide_resnet{_depth}_2", tiny=TINY_IMAGENET)(
        functools.partial(_imagenet, **DEPTHS[_depth], bottleneck_multiplier=2.0)
    )
for _depth in (50, 101, 152, 200):
    register(f"resnetrs{_depth}", tiny={**TINY_IMAGENET, "drop_path_rate": 0.1})(
        functools.partial(
            _imagenet,
            **DEPTHS[_depth],
            variant="d",
            stem_pool="conv",
            se_ratio=0.25,
        )
    )


@register_converter(
    r"resnet(18|34|50|101|152|200)|resnet(18|34|50|101|152|200)d|resnet50c"
    r"|wide_resnet(50|101)_2|resnetrs(50|101|152|200)"
)
def _from_torch(arrays, name: str) -> dict:
    """timm (or torchvision) ResNet state dict -> variables of ``create(name)``.

    The layout is read from the archjax model (stem, shortcut, SE, depth), not
    guessed from the keys, so a state dict of another variant fails loudly.
    """
    cfg = create(name)
    read = StateDictReader(arrays)
    params, stats = {}, {}

    def conv(torch_key: str, scope: dict, flax_name: str) -> None:
        scope[flax_name] = {"kernel": read.conv(f"{torch_key}.weight")}

    def bn(torch_key: str, scope: dict, stats_scope: dict, flax_name: str) -> None:
        scope[flax_name] = {"scale": read(f"{torch_key}.weight"), "bias": read(f"{torch_key}.bias")}
        stats_scope[flax_name] = {
            "mean": read(f"{torch_key}.running_mean"),
            "var": read(f"{torch_key}.running_var"),
        }

    if cfg.stem == "deep":  # timm: conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv)
        for i, (c, b) in enumerate([(0, 1), (3, 4)]):
            conv(f"conv1.{c}", params, f"stem_conv{i + 1}")
            bn(f"conv1.{b}", params, stats, f"stem_bn{i + 1}")
        conv("conv1.6", params, "stem_conv3")
    else:
        conv("conv1", params, "stem_conv")
    bn("bn1", params, stats, "stem_bn")
    if cfg.stem_pool == "conv":  # timm: maxpool = Sequential(conv, bn, relu)
        conv("maxpool.0", params, "stem_pool_conv")
        bn("maxpool.1", params, stats, "stem_pool_bn")
    num_convs = 3 if cfg.block == "bottleneck" else 2
    # timm's avg-pool shortcut is Sequential(pool, conv, bn); the conv one (conv, bn).
    down = (1, 2) if cfg.downsample == "avg" else (0, 1)
    for i, num_blocks in enumerate(cfg.stage_sizes):
        for j in range(num_blocks):
            prefix, scope = f"layer{i + 1}.{j}", f"stage{i + 1}_block{j + 1}"
            p, s = params.setdefault(scope, {}), stats.setdefault(scope, {})
            for c in range(1, num_convs + 1):
                conv(f"{prefix}.conv{c}", p, f"conv{c}")
                bn(f"{prefix}.bn{c}", p, s, f"bn{c}")
            if cfg.se_ratio > 0:
                p["se"] = {
                    f"fc{k}": {
                        "kernel": read.conv(f"{prefix}.se.fc{k}.weight")[0, 0],
                        "bias": read(f"{prefix}.se.fc{k}.bias"),
                    }
                    for k in (1, 2)
                }
            if f"{prefix}.downsample.{down[0]}.weight" in arrays:
                conv(f"{prefix}.downsample.{down[0]}", p, "downsample_conv")
                bn(f"{prefix}.downsample.{down[1]}", p, s, "downsample_bn")
    params["head"] = {"kernel": read.dense("fc.weight"), "bias": read("fc.bias")}
    read.check_all_used()
    return {"params": params, "batch_stats": stats}
