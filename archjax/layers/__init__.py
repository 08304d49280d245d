"""Reusable layers: normalizations, weight-standardized convolutions, SE, initializers."""

from archjax.layers.drop_path import DropPath, drop_path
from archjax.layers.initializers import orthogonal, zero_init
from archjax.layers.norms import (
    NORM_KINDS,
    BatchChannelNorm,
    EvoNormS0,
    GroupNorm,
    Identity,
    norm_layer,
)
from archjax.layers.squeeze_excite import SqueezeExcite, make_divisible
from archjax.layers.std_conv import ScaledStdConv, StdConv, standardize_kernel

__all__ = [
    "NORM_KINDS",
    "BatchChannelNorm",
    "DropPath",
    "EvoNormS0",
    "GroupNorm",
    "Identity",
    "ScaledStdConv",
    "SqueezeExcite",
    "StdConv",
    "drop_path",
    "make_divisible",
    "norm_layer",
    "orthogonal",
    "standardize_kernel",
    "zero_init",
]
