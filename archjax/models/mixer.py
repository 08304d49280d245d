"""MLP-Mixer: token-mixing and channel-mixing MLPs over image patches.

Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision" (NeurIPS
2021). The layout is timm's ``MlpMixer`` (so its weights import exactly): a
strided patch-embedding convolution, pre-LayerNorm blocks
``x + token_mlp(ln(x)^T)^T`` then ``x + channel_mlp(ln(x))`` (GELU MLPs, hidden
sizes 0.5x and 4x the width), a final LayerNorm, mean over tokens and a linear
head. LayerNorm epsilon is 1e-6, as in timm. The MLP, stochastic depth and
initialization come from :mod:`archjax.layers`, as ViT's do.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from archjax.layers import LN_EPS, DropPath, Mlp, check_patch_input, trunc_normal
from archjax.models.registry import register
from archjax.models.torch_import import StateDictReader, register_converter


class MixerBlock(nn.Module):
    """Token mixing (MLP across patches) then channel mixing (MLP across features)."""

    token_hidden: int
    channel_hidden: int
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(nn.LayerNorm, epsilon=LN_EPS, dtype=self.dtype)
        mlp = functools.partial(Mlp, dropout_rate=self.dropout_rate, dtype=self.dtype)
        drop_path = DropPath(rate=self.drop_path_rate)
        y = jnp.swapaxes(norm(name="norm1")(x), 1, 2)  # [batch, width, tokens]
        y = jnp.swapaxes(mlp(hidden=self.token_hidden, name="mlp_tokens")(y, train=train), 1, 2)
        x = x + drop_path(y, train=train)
        y = mlp(hidden=self.channel_hidden, name="mlp_channels")(norm(name="norm2")(x), train=train)
        return x + drop_path(y, train=train)


class MlpMixer(nn.Module):
    """An MLP-Mixer for NHWC images.

    Attributes:
      depth: number of Mixer blocks.
      embed_dim: token width before ``width_multiplier``.
      width_multiplier: scales the width; both MLP hidden sizes follow it.
      token_mlp_ratio: token-mixing hidden size / width (0.5 in the paper's S and B).
      channel_mlp_ratio: channel-mixing hidden size / width (4 in the paper).
      patch_size: side of the square patches.
      image_size: input resolution; it sets the number of tokens, hence the
        token-MLP weights, and other inputs are refused.
      num_classes: size of the classifier output.
      dropout_rate: dropout inside the MLPs.
      drop_path_rate: stochastic depth, rising linearly to this rate at the last block.
      dtype: computation dtype; parameters are kept in float32, logits are float32.
    """

    depth: int = 12
    embed_dim: int = 768
    width_multiplier: float = 1.0
    token_mlp_ratio: float = 0.5
    channel_mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 224
    num_classes: int = 1000
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        check_patch_input("MlpMixer", x, self.image_size, self.patch_size)
        width = max(1, round(self.embed_dim * self.width_multiplier))
        p = self.patch_size
        x = nn.Conv(
            features=width, kernel_size=(p, p), strides=p, padding="VALID",
            kernel_init=trunc_normal, dtype=self.dtype, name="stem",
        )(x.astype(self.dtype))  # fmt: skip
        x = x.reshape(x.shape[0], -1, width)
        for i in range(self.depth):
            x = MixerBlock(
                token_hidden=int(width * self.token_mlp_ratio),
                channel_hidden=int(width * self.channel_mlp_ratio),
                dropout_rate=self.dropout_rate,
                drop_path_rate=self.drop_path_rate * i / max(1, self.depth - 1),
                dtype=self.dtype,
                name=f"block{i}",
            )(x, train=train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
        x = nn.Dense(
            features=self.num_classes, dtype=self.dtype, kernel_init=trunc_normal, name="head"
        )(jnp.mean(x, axis=1))
        return x.astype(jnp.float32)


_VARIANTS = {  # name: (embed_dim, depth, patch_size)
    "mixer_s16_224": (512, 8, 16),
    "mixer_s32_224": (512, 8, 32),
    "mixer_b16_224": (768, 12, 16),
    "mixer_b32_224": (768, 12, 32),
}


for _name, (_dim, _depth, _patch) in _VARIANTS.items():
    register(_name, tiny=dict(depth=2, embed_dim=32, image_size=32))(
        functools.partial(MlpMixer, embed_dim=_dim, depth=_depth, patch_size=_patch)
    )


@register_converter(r"mixer_(s|b)(16|32)_224")
def _from_torch(arrays: Mapping[str, np.ndarray], name: str) -> dict:
    """timm ``MlpMixer`` state dict -> variables (same layer names)."""
    read = StateDictReader(arrays)
    params = {
        "stem": {"kernel": read.conv("stem.proj.weight"), "bias": read("stem.proj.bias")},
        "norm": read.layer_norm("norm"),
        "head": read.linear("head"),
    }
    i = 0
    while f"blocks.{i}.norm1.weight" in arrays:
        t = f"blocks.{i}"
        params[f"block{i}"] = {
            "norm1": read.layer_norm(f"{t}.norm1"),
            "norm2": read.layer_norm(f"{t}.norm2"),
            **{
                mlp: {
                    "fc1": read.linear(f"{t}.{mlp}.fc1"),
                    "fc2": read.linear(f"{t}.{mlp}.fc2"),
                }
                for mlp in ("mlp_tokens", "mlp_channels")
            },
        }
        i += 1
    read.check_all_used()
    return {"params": params}
