"""The transformer MLP shared by ViT and MLP-Mixer (timm's ``Mlp``)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from archjax.layers.sigma_reparam import transformer_dense


class Mlp(nn.Module):
    """Dense ``fc1`` -> GELU (exact, as torch) -> Dense ``fc2``, with dropout after each.

    Attributes:
      hidden: width of ``fc1``; ``fc2`` maps back to the input width.
      dropout_rate: dropout after the activation and after ``fc2``.
      sigma_reparam: σReparam on both Dense layers (Zhai et al. 2023).
      dtype: computation dtype; parameters stay float32.
    """

    hidden: int
    dropout_rate: float = 0.0
    sigma_reparam: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        dense = functools.partial(
            transformer_dense, sigma_reparam=self.sigma_reparam, train=train, dtype=self.dtype
        )
        drop = nn.Dropout(rate=self.dropout_rate, deterministic=not train)
        y = drop(nn.gelu(dense(features=self.hidden, name="fc1")(x), approximate=False))
        return drop(dense(features=x.shape[-1], name="fc2")(y))
