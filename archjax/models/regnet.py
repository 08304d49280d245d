"""RegNetX and RegNetY (Radosavovic et al., "Designing Network Design Spaces", 2020).

https://arxiv.org/abs/2003.13678. The network is the AnyNet template of the
paper as timm builds it: a 3x3 stride-2 stem of width 32, stages of "X blocks"
(1x1 -> grouped 3x3 (stride 2 in the first block of a stage) -> 1x1, with a
1x1 projection shortcut where the shape changes), global average pooling and a
linear classifier. RegNetY adds squeeze-and-excitation (Hu et al., 2018) after
the 3x3 convolution, with width ``se_ratio * block input width``.

Per-stage widths and depths come from :func:`generate_regnet` (see
``regnet_space.py``); the knobs are the design-space parameters themselves
(``depth``, ``w0``, ``wa``, ``wm``, ``group_width``, ``bottleneck_ratio``,
``se_ratio``) plus ``width_multiplier``, ``num_classes`` and ``dtype``. Named
presets use timm's names (``regnetx_002`` = RegNetX-200MF, ..., ``regnety_040``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from archjax.models.registry import register
from archjax.models.regnet_space import (
    RegNetConfig,
    RegNetParams,
    adjust_widths_groups,
    generate_regnet,
)
from archjax.models.torch_import import StateDictReader, register_converter

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class SqueezeExcite(nn.Module):
    """Channel gating: global pool -> dense -> ReLU -> dense -> sigmoid -> scale."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2))
        s = nn.relu(nn.Dense(self.features, dtype=self.dtype, name="fc1")(s))
        s = nn.sigmoid(nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(s))
        return x * s[:, None, None, :]


class RegNetBlock(nn.Module):
    """The X block (Y block with ``se_ratio > 0``): 1x1 -> grouped 3x3 -> (SE) -> 1x1."""

    features: int
    group_width: int
    strides: int = 1
    bottleneck_ratio: float = 1.0
    se_ratio: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype)
        w_in = x.shape[-1]
        wb = int(round(self.features * self.bottleneck_ratio))
        y = nn.relu(norm(name="bn1")(conv(wb, (1, 1), name="conv1")(x)))
        y = conv(
            wb,
            (3, 3),
            strides=self.strides,
            padding=1,
            feature_group_count=wb // self.group_width,
            name="conv2",
        )(y)
        y = nn.relu(norm(name="bn2")(y))
        if self.se_ratio:
            y = SqueezeExcite(max(1, int(round(w_in * self.se_ratio))), self.dtype, name="se")(y)
        y = conv(self.features, (1, 1), name="conv3")(y)
        # Zero-initialized last BN, as timm (Goyal et al., 2017): each block starts as identity.
        y = norm(scale_init=nn.initializers.zeros, name="bn3")(y)
        if w_in != self.features or self.strides != 1:
            x = conv(self.features, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class RegNet(nn.Module):
    """A RegNet for NHWC images, generated from its design-space parameters.

    Attributes:
      depth: total number of blocks ``d`` (depth knob).
      w0: initial width (a multiple of 8).
      wa: slope of the width rule.
      wm: width ratio between stages (> 1).
      group_width: channels per group of the 3x3 convolutions.
      bottleneck_ratio: bottleneck width / block width (1 for the paper's presets).
      se_ratio: squeeze-excitation width / block input width (0: RegNetX, 0.25: RegNetY).
      stem_width: width of the 3x3 stride-2 stem.
      width_multiplier: scales stem, stage and group widths after generation (width knob).
      num_classes: size of the classifier output.
      dtype: computation dtype; parameters are kept in float32.
      stage_depths, stage_widths, stage_group_widths: an AnyNet point (paper Sec. 3.1,
        e.g. from :func:`sample_anynet`): explicit per-stage blocks, widths and group
        widths that replace the quantized linear rule (``depth``, ``w0``, ``wa``, ``wm``
        and ``group_width`` are then unused). All three or none.
    """

    depth: int
    w0: int
    wa: float
    wm: float
    group_width: int
    bottleneck_ratio: float = 1.0
    se_ratio: float = 0.0
    stem_width: int = 32
    width_multiplier: float = 1.0
    num_classes: int = 1000
    dtype: Any = jnp.float32
    stage_depths: tuple[int, ...] | None = None
    stage_widths: tuple[int, ...] | None = None
    stage_group_widths: tuple[int, ...] | None = None

    def _generated(self) -> RegNetConfig:
        stages = (self.stage_depths, self.stage_widths, self.stage_group_widths)
        if all(s is None for s in stages):
            return generate_regnet(self._params())
        if any(s is None for s in stages) or len({len(s) for s in stages}) != 1:
            raise ValueError(
                "stage_depths, stage_widths and stage_group_widths must be given together "
                f"with one entry per stage, got {stages}."
            )
        widths, groups = adjust_widths_groups(
            tuple(self.stage_widths), tuple(self.stage_group_widths), self.bottleneck_ratio
        )
        return RegNetConfig(
            depths=tuple(self.stage_depths),
            widths=widths,
            group_widths=groups,
            bottleneck_ratio=self.bottleneck_ratio,
            se_ratio=self.se_ratio,
        )

    def _params(self) -> RegNetParams:
        return RegNetParams(
            depth=self.depth,
            w0=self.w0,
            wa=self.wa,
            wm=self.wm,
            group_width=self.group_width,
            bottleneck_ratio=self.bottleneck_ratio,
            se_ratio=self.se_ratio,
        )

    def stage_config(self) -> RegNetConfig:
        """Per-stage depths, widths and group widths (after ``width_multiplier``)."""
        config = self._generated()
        if self.width_multiplier == 1.0:
            return config
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}.")
        scale = lambda ws: tuple(max(1, int(round(w * self.width_multiplier))) for w in ws)
        widths, groups = adjust_widths_groups(
            scale(config.widths), scale(config.group_widths), self.bottleneck_ratio
        )
        return RegNetConfig(
            depths=config.depths,
            widths=widths,
            group_widths=groups,
            bottleneck_ratio=self.bottleneck_ratio,
            se_ratio=self.se_ratio,
        )

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        if x.ndim != 4:
            raise ValueError(f"RegNet expects NHWC images, got shape {x.shape}.")
        config = self.stage_config()
        stem_width = max(1, int(round(self.stem_width * self.width_multiplier)))
        x = x.astype(self.dtype)
        x = nn.Conv(
            stem_width,
            (3, 3),
            strides=2,
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
        stages = zip(config.depths, config.widths, config.group_widths, strict=True)
        for i, (depth, width, group_width) in enumerate(stages):
            for j in range(depth):
                x = RegNetBlock(
                    features=width,
                    group_width=group_width,
                    strides=2 if j == 0 else 1,
                    bottleneck_ratio=config.bottleneck_ratio,
                    se_ratio=config.se_ratio,
                    dtype=self.dtype,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


# timm's model_cfgs (= pycls's RegNetX/Y-200MF..4.0GF); "regnetx_016" does 1.6e9 multiply-adds.
PRESETS: dict[str, RegNetParams] = {
    "regnetx_002": RegNetParams(w0=24, wa=36.44, wm=2.49, group_width=8, depth=13),
    "regnetx_004": RegNetParams(w0=24, wa=24.48, wm=2.54, group_width=16, depth=22),
    "regnetx_006": RegNetParams(w0=48, wa=36.97, wm=2.24, group_width=24, depth=16),
    "regnetx_008": RegNetParams(w0=56, wa=35.73, wm=2.28, group_width=16, depth=16),
    "regnetx_016": RegNetParams(w0=80, wa=34.01, wm=2.25, group_width=24, depth=18),
    "regnetx_032": RegNetParams(w0=88, wa=26.31, wm=2.25, group_width=48, depth=25),
    "regnetx_040": RegNetParams(w0=96, wa=38.65, wm=2.43, group_width=40, depth=23),
    "regnety_002": RegNetParams(w0=24, wa=36.44, wm=2.49, group_width=8, depth=13, se_ratio=0.25),
    "regnety_004": RegNetParams(w0=48, wa=27.89, wm=2.09, group_width=8, depth=16, se_ratio=0.25),
    "regnety_006": RegNetParams(w0=48, wa=32.54, wm=2.32, group_width=16, depth=15, se_ratio=0.25),
    "regnety_008": RegNetParams(w0=56, wa=38.84, wm=2.4, group_width=16, depth=14, se_ratio=0.25),
    "regnety_016": RegNetParams(w0=48, wa=20.71, wm=2.65, group_width=24, depth=27, se_ratio=0.25),
    "regnety_032": RegNetParams(w0=80, wa=42.63, wm=2.66, group_width=24, depth=21, se_ratio=0.25),
    "regnety_040": RegNetParams(w0=96, wa=31.41, wm=2.24, group_width=64, depth=22, se_ratio=0.25),
}

# A member of the same space with 4 stages of one block, widths 8/16/32/64 and
# group width 4 (so the 3x3 convolutions stay grouped); SE is kept for RegNetY.
_TINY = {"depth": 4, "w0": 8, "wa": 13.6, "wm": 2.0, "group_width": 4}


def _preset(params: RegNetParams, **kwargs) -> RegNet:
    defaults = {f: getattr(params, f) for f in params.__dataclass_fields__}
    return RegNet(**{**defaults, **kwargs})


for _name, _params in PRESETS.items():
    register(_name, tiny=_TINY)(functools.partial(_preset, _params))


@register_converter(r"regnet[xy]_\d{3}")
def _from_torch(arrays, name: str) -> dict:
    """timm ``regnet{x,y}_*`` state dict -> variables (same layer order)."""
    read = StateDictReader(arrays)
    params, stats = {}, {}

    def conv_bn(prefix: str, p: dict, s: dict, conv: str, bn: str) -> None:
        p[conv] = {"kernel": read.conv(f"{prefix}.conv.weight")}
        p[bn] = {"scale": read(f"{prefix}.bn.weight"), "bias": read(f"{prefix}.bn.bias")}
        s[bn] = {"mean": read(f"{prefix}.bn.running_mean"), "var": read(f"{prefix}.bn.running_var")}

    conv_bn("stem", params, stats, "stem_conv", "stem_bn")
    stage = 1
    while f"s{stage}.b1.conv1.conv.weight" in arrays:
        j = 1
        while f"s{stage}.b{j}.conv1.conv.weight" in arrays:
            prefix, scope = f"s{stage}.b{j}", f"stage{stage}_block{j}"
            p, s = params.setdefault(scope, {}), stats.setdefault(scope, {})
            for c in (1, 2, 3):
                conv_bn(f"{prefix}.conv{c}", p, s, f"conv{c}", f"bn{c}")
            if f"{prefix}.se.fc1.weight" in arrays:
                p["se"] = {
                    fc: {
                        "kernel": read.dense(f"{prefix}.se.{fc}.weight")[0, 0],
                        "bias": read(f"{prefix}.se.{fc}.bias"),
                    }
                    for fc in ("fc1", "fc2")
                }
            if f"{prefix}.downsample.conv.weight" in arrays:
                conv_bn(f"{prefix}.downsample", p, s, "downsample_conv", "downsample_bn")
            j += 1
        stage += 1
    params["head"] = {"kernel": read.dense("head.fc.weight"), "bias": read("head.fc.bias")}
    read.check_all_used()
    return {"params": params, "batch_stats": stats}
