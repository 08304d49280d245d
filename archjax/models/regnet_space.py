"""The RegNet design space: width generator, analytic FLOP count and sampler.

Radosavovic et al., "Designing Network Design Spaces" (CVPR 2020),
https://arxiv.org/abs/2003.13678. A RegNet is a point ``(d, w0, wa, wm, g, b)``
of a low-dimensional space; a quantized linear rule turns it into per-stage
widths and depths (Sec. 3.3). Everything here is pure Python (no JAX), so a
search over thousands of candidates costs milliseconds.

FLOPs here follow the paper: "flops" means multiply-adds (RegNetX-1.6GF does
1.6e9 multiply-adds at 224 px), counted for convolutions and dense layers
including padded positions; normalization and activations are not counted.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegNetParams:
    """A point of the RegNet design space (paper Sec. 3.3; timm's ``RegNetCfg``)."""

    depth: int  # d: total number of blocks.
    w0: int  # initial width, a multiple of 8.
    wa: float  # slope of the linear width rule.
    wm: float  # width multiplier between stages (> 1).
    group_width: int  # g: channels per group of the 3x3 convolution.
    bottleneck_ratio: float = 1.0  # w_bottleneck = ratio * w (the paper's 1/b).
    se_ratio: float = 0.0  # squeeze-excitation width / block input width; 0.25 for RegNetY.


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegNetConfig:
    """A generated RegNet: one entry per stage (all stages but the stem have stride 2)."""

    depths: tuple[int, ...]  # blocks per stage.
    widths: tuple[int, ...]  # output width of every block of the stage.
    group_widths: tuple[int, ...]  # channels per group of each stage's 3x3 convolution.
    bottleneck_ratio: float = 1.0  # as in RegNetParams.
    se_ratio: float = 0.0  # as in RegNetParams.

    @property
    def num_stages(self) -> int:
        """Number of stages."""
        return len(self.depths)


def adjust_widths_groups(
    widths: tuple[int, ...], group_widths: tuple[int, ...], bottleneck_ratio: float
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Makes every bottleneck width a multiple of its group width (paper Sec. 3.3).

    The group width is capped at the bottleneck width, the bottleneck width is
    rounded to the nearest multiple of the group width, and the block width is
    recomputed from it (as pycls and timm do).

    Args:
      widths: stage widths.
      group_widths: stage group widths.
      bottleneck_ratio: ``w_bottleneck / w``.

    Returns:
      ``(widths, group_widths)`` that are compatible.
    """
    bottleneck = [max(1, int(w * bottleneck_ratio)) for w in widths]
    groups = [min(g, wb) for g, wb in zip(group_widths, bottleneck, strict=True)]
    bottleneck = [max(g, int(round(wb / g) * g)) for wb, g in zip(bottleneck, groups, strict=True)]
    return tuple(int(wb / bottleneck_ratio) for wb in bottleneck), tuple(groups)


def generate_regnet(params: RegNetParams, *, quant: int = 8) -> RegNetConfig:
    """Per-stage widths and depths of a RegNet from its design-space parameters.

    Quantized linear rule (paper Eqs. 2-4): block ``j`` gets the continuous width
    ``u_j = w0 + wa * j``, the exponent ``s_j = round(log(u_j / w0) / log(wm))``
    and the width ``w0 * wm**s_j`` rounded to a multiple of ``quant``; blocks of
    equal width form a stage; then bottleneck and group widths are made
    compatible (:func:`adjust_widths_groups`).

    Args:
      params: the design-space point.
      quant: width quantum (8 in the paper).

    Returns:
      The per-stage :class:`RegNetConfig`.

    Raises:
      ValueError: parameters outside the domain of the rule.

    Example:
      >>> cfg = generate_regnet(RegNetParams(depth=18, w0=80, wa=34.01, wm=2.25, group_width=24))
      >>> cfg.depths, cfg.widths
      ((2, 4, 10, 2), (72, 168, 408, 912))
    """
    p = params
    if p.depth < 1 or p.w0 <= 0 or p.w0 % quant or p.wa < 0 or p.wm <= 1 or p.group_width < 1:
        raise ValueError(
            f"Invalid RegNet parameters {p}: need depth >= 1, w0 > 0 a multiple of {quant}, "
            "wa >= 0, wm > 1, group_width >= 1."
        )
    if p.bottleneck_ratio <= 0 or p.se_ratio < 0:
        raise ValueError(
            f"Invalid RegNet parameters {p}: need bottleneck_ratio > 0, se_ratio >= 0."
        )
    # float32, as timm computes it, so that rounding ties go the same way.
    u = np.arange(p.depth, dtype=np.float32) * np.float32(p.wa) + np.float32(p.w0)
    s = np.round(np.log(u / np.float32(p.w0)) / np.float32(math.log(p.wm)))
    block_widths = (np.round(p.w0 * np.power(np.float32(p.wm), s) / quant) * quant).astype(int)
    stage_widths, depths = np.unique(block_widths, return_counts=True)
    widths, groups = adjust_widths_groups(
        tuple(int(w) for w in stage_widths),
        (p.group_width,) * len(stage_widths),
        p.bottleneck_ratio,
    )
    return RegNetConfig(
        depths=tuple(int(d) for d in depths),
        widths=widths,
        group_widths=groups,
        bottleneck_ratio=p.bottleneck_ratio,
        se_ratio=p.se_ratio,
    )


def _conv_out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # 3x3/pad 1 and 1x1/pad 0 agree


def regnet_flops(
    config: RegNetConfig,
    *,
    image_size: int = 224,
    num_classes: int = 1000,
    in_channels: int = 3,
    stem_width: int = 32,
) -> int:
    """Multiply-adds of one forward pass of a RegNet (the paper's "flops").

    Counts convolutions (padded positions included, as pycls does), the SE and
    classifier dense layers and their biases; not BatchNorm, activations or
    pooling. :func:`archjax.models.stats.count_flops` measures the compiled
    program instead (2 FLOPs per multiply-add, padded positions skipped).

    Args:
      config: the network (:func:`generate_regnet`).
      image_size: input height = width.
      num_classes: classifier outputs.
      in_channels: input channels.
      stem_width: output channels of the 3x3 stride-2 stem.

    Returns:
      The number of multiply-adds for one image.
    """
    h = _conv_out(image_size, 2)
    macs = h * h * 9 * in_channels * stem_width
    w_in = stem_width
    for depth, w, g in zip(config.depths, config.widths, config.group_widths, strict=True):
        wb = int(round(w * config.bottleneck_ratio))
        for j in range(depth):
            h_out = _conv_out(h, 2) if j == 0 else h
            macs += h * h * w_in * wb  # 1x1 at input resolution
            macs += h_out * h_out * 9 * wb * g  # grouped 3x3: wb * (wb / groups) per pixel
            if config.se_ratio:
                w_se = max(1, int(round(w_in * config.se_ratio)))
                macs += 2 * wb * w_se + w_se + wb
            macs += h_out * h_out * wb * w
            if w_in != w or h_out != h:
                macs += h_out * h_out * w_in * w
            w_in, h = w, h_out
    return macs + w_in * num_classes + num_classes


def _numpy_rng(key_or_seed: Any) -> np.random.Generator:
    if isinstance(key_or_seed, int | np.integer):
        return np.random.default_rng(int(key_or_seed))
    import jax  # only for keys; the rest of this module needs no JAX

    key = key_or_seed
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([int(v) for v in np.asarray(key).ravel()])


def sample_regnet(
    key_or_seed: Any,
    *,
    flops_budget: float,
    lower_fraction: float = 0.9,
    image_size: int = 224,
    num_classes: int = 1000,
    max_depth: int = 63,
    max_w0: int = 256,
    max_wa: float = 256.0,
    wm_range: tuple[float, float] = (1.5, 3.0),
    group_widths: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    bottleneck_ratios: tuple[float, ...] = (1.0, 0.5, 0.25),
    se_ratio: float = 0.0,
    num_stages: int = 4,
    max_tries: int = 100_000,
) -> RegNetParams:
    """Draws a random RegNet whose FLOPs lie in ``[lower_fraction, 1] * flops_budget``.

    Rejection sampling from the RegNet design space of the paper (Sec. 3.3):
    ``d < 64``, ``w0 <= 256`` (multiple of 8), ``1 <= wa <= 256``,
    ``1.5 <= wm <= 3``, ``g in {1, 2, 4, ..., 32}``, ``b in {1, 2, 4}`` (here as
    ``bottleneck_ratio = 1/b``), uniformly (``wa`` log-uniformly, so that small
    slopes are drawn as often as large ones). Narrow the ranges for the paper's refined space, e.g.
    ``bottleneck_ratios=(1.0,), max_depth=40, wm_range=(2.0, 3.0)``; pass
    ``se_ratio=0.25`` for RegNetY. Only networks with ``num_stages`` stages are
    kept (AnyNet has 4). FLOPs are multiply-adds from :func:`regnet_flops` at
    ``image_size``.

    Args:
      key_or_seed: a JAX PRNG key or an int seed; the same one gives the same network.
      flops_budget: upper bound on multiply-adds (e.g. ``400e6`` for the 400MF regime).
      lower_fraction: a sample must use at least this fraction of the budget.
      image_size: resolution at which FLOPs are counted.
      num_classes: classifier size used in the FLOP count.
      max_depth: largest ``d``.
      max_w0: largest ``w0``.
      max_wa: largest ``wa``.
      wm_range: ``(min, max)`` of ``wm``.
      group_widths: allowed ``g``.
      bottleneck_ratios: allowed ``w_bottleneck / w``.
      se_ratio: SE ratio of every sample (0 for RegNetX).
      num_stages: number of stages a sample must have.
      max_tries: give up after this many draws.

    Returns:
      :class:`RegNetParams`; build it with
      ``RegNet(**dataclasses.asdict(params), num_classes=...)``.

    Raises:
      ValueError: bad arguments, or no sample met the budget within ``max_tries``.

    Example:
      >>> p = sample_regnet(0, flops_budget=400e6)
      >>> 0.9 * 400e6 <= regnet_flops(generate_regnet(p)) <= 400e6
      True
    """
    if flops_budget <= 0 or not 0 <= lower_fraction <= 1:
        raise ValueError(
            f"Need flops_budget > 0 and 0 <= lower_fraction <= 1, got {flops_budget}, "
            f"{lower_fraction}."
        )
    if not 1 < wm_range[0] <= wm_range[1]:
        raise ValueError(f"wm_range must satisfy 1 < min <= max, got {wm_range}.")
    rng = _numpy_rng(key_or_seed)
    for _ in range(max_tries):
        params = RegNetParams(
            depth=int(rng.integers(1, max_depth + 1)),
            w0=8 * int(rng.integers(1, max_w0 // 8 + 1)),
            wa=float(np.exp(rng.uniform(0.0, np.log(max_wa)))),
            wm=float(rng.uniform(*wm_range)),
            group_width=int(rng.choice(group_widths)),
            bottleneck_ratio=float(rng.choice(bottleneck_ratios)),
            se_ratio=se_ratio,
        )
        config = generate_regnet(params)
        if config.num_stages != num_stages:
            continue
        flops = regnet_flops(config, image_size=image_size, num_classes=num_classes)
        if lower_fraction * flops_budget <= flops <= flops_budget:
            return params
    raise ValueError(
        f"No RegNet with {num_stages} stages and {lower_fraction} * {flops_budget:.3g} <= "
        f"flops <= {flops_budget:.3g} in {max_tries} draws; widen the ranges or the budget."
    )


def sample_anynet(
    key_or_seed: Any,
    *,
    flops_budget: float,
    lower_fraction: float = 0.9,
    image_size: int = 224,
    num_classes: int = 1000,
    num_stages: int = 4,
    max_stage_depth: int = 16,
    max_width: int = 1024,
    group_widths: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    bottleneck_ratios: tuple[float, ...] = (1.0, 0.5, 0.25),
    max_tries: int = 100_000,
) -> RegNetConfig:
    """Draws a random AnyNetX network whose FLOPs lie in ``[lower_fraction, 1] * flops_budget``.

    The unconstrained space the paper starts from (Sec. 3.1): every stage ``i``
    draws its own depth ``d_i <= 16``, width ``w_i <= 1024`` (a multiple of 8) and
    group width ``g_i``, uniformly; one bottleneck ratio is shared by all stages
    (the paper's AnyNetX_B, whose error distribution matches AnyNetX_A's). The
    same rejection on :func:`regnet_flops` as :func:`sample_regnet`, so samples of
    both spaces can share one FLOP range.

    Args:
      key_or_seed: a JAX PRNG key or an int seed; the same one gives the same network.
      flops_budget: upper bound on multiply-adds.
      lower_fraction: a sample must use at least this fraction of the budget.
      image_size: resolution at which FLOPs are counted.
      num_classes: classifier size used in the FLOP count.
      num_stages: stages per network (4 in the paper).
      max_stage_depth: largest ``d_i``.
      max_width: largest ``w_i``.
      group_widths: allowed ``g_i``.
      bottleneck_ratios: allowed shared ``w_bottleneck / w``.
      max_tries: give up after this many draws.

    Returns:
      A :class:`RegNetConfig`; build it with ``RegNet(..., stage_depths=cfg.depths,
      stage_widths=cfg.widths, stage_group_widths=cfg.group_widths,
      bottleneck_ratio=cfg.bottleneck_ratio)``.

    Raises:
      ValueError: bad arguments, or no sample met the budget within ``max_tries``.

    Example:
      >>> cfg = sample_anynet(0, flops_budget=400e6)
      >>> 0.9 * 400e6 <= regnet_flops(cfg) <= 400e6
      True
    """
    if flops_budget <= 0 or not 0 <= lower_fraction <= 1:
        raise ValueError(
            f"Need flops_budget > 0 and 0 <= lower_fraction <= 1, got {flops_budget}, "
            f"{lower_fraction}."
        )
    if num_stages < 1 or max_stage_depth < 1 or max_width < 8:
        raise ValueError(
            f"Need num_stages >= 1, max_stage_depth >= 1 and max_width >= 8, got "
            f"{num_stages}, {max_stage_depth}, {max_width}."
        )
    rng = _numpy_rng(key_or_seed)
    for _ in range(max_tries):
        ratio = float(rng.choice(bottleneck_ratios))
        widths, groups = adjust_widths_groups(
            tuple(8 * int(w) for w in rng.integers(1, max_width // 8 + 1, num_stages)),
            tuple(int(g) for g in rng.choice(group_widths, num_stages)),
            ratio,
        )
        config = RegNetConfig(
            depths=tuple(int(d) for d in rng.integers(1, max_stage_depth + 1, num_stages)),
            widths=widths,
            group_widths=groups,
            bottleneck_ratio=ratio,
        )
        flops = regnet_flops(config, image_size=image_size, num_classes=num_classes)
        if lower_fraction * flops_budget <= flops <= flops_budget:
            return config
    raise ValueError(
        f"No AnyNet with {lower_fraction} * {flops_budget:.3g} <= flops <= {flops_budget:.3g} "
        f"in {max_tries} draws; widen the ranges or the budget."
    )
