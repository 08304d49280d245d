"""Reusable layers: normalizations, weight-standardized convolutions, SE, initializers,
and the transformer pieces (MLP, σReparam Dense, patch-input check) ViT and Mixer share."""

from archjax.layers.drop_path import DropPath, drop_path
from archjax.layers.initializers import orthogonal, trunc_normal, zero_init
from archjax.layers.mlp import Mlp
from archjax.layers.norms import (
    LN_EPS,
    NORM_KINDS,
    BatchChannelNorm,
    EvoNormS0,
    GroupNorm,
    Identity,
    norm_layer,
)
from archjax.layers.patches import check_patch_input
from archjax.layers.sigma_reparam import SigmaReparamDense, transformer_dense
from archjax.layers.squeeze_excite import SqueezeExcite, make_divisible
from archjax.layers.std_conv import ScaledStdConv, StdConv, standardize_kernel

__all__ = [
    "LN_EPS",
    "NORM_KINDS",
    "BatchChannelNorm",
    "DropPath",
    "EvoNormS0",
    "GroupNorm",
    "Identity",
    "Mlp",
    "ScaledStdConv",
    "SigmaReparamDense",
    "SqueezeExcite",
    "StdConv",
    "check_patch_input",
    "drop_path",
    "make_divisible",
    "norm_layer",
    "orthogonal",
    "standardize_kernel",
    "transformer_dense",
    "trunc_normal",
    "zero_init",
]
