"""Vision Transformer (ViT) with optional σReparam and an attention-entropy probe.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale" (ICLR 2021). The layout is timm's ``VisionTransformer``
(so its weights import exactly): a strided patch-embedding convolution, a class
token, learned position embeddings that include the class token, pre-LayerNorm
blocks (fused ``qkv`` projection with bias, GELU MLP), a final LayerNorm and a
linear head on the class token. LayerNorm epsilon is 1e-6, as in timm.

σReparam (Zhai et al., "Stabilizing Transformer Training by Preventing
Attention Entropy Collapse", ICML 2023) replaces every Dense layer of the blocks
(``qkv``, ``proj``, ``fc1``, ``fc2``) by ``W_hat = gamma / sigma(W) * W`` with
``sigma(W)`` estimated by power iteration; see
:class:`archjax.layers.SigmaReparamDense`.

Every attention layer sows its mean attention entropy (the collapse that
σReparam prevents) into ``intermediates``; read it with
``model.apply(v, x, mutable=["intermediates"])`` and :func:`attention_entropies`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archjax.layers import (
    LN_EPS,
    DropPath,
    Mlp,
    check_patch_input,
    transformer_dense,
    trunc_normal,
)
from archjax.models.registry import register
from archjax.models.torch_import import StateDictReader, register_converter


def padded_attention(q, k, v, *, implementation: str, multiple: int) -> jax.Array:
    """``jax.nn.dot_product_attention`` on ``[B, T, heads, head_dim]`` with the tokens
    padded to a multiple of ``multiple``; padded keys are masked, padded queries dropped."""
    n = q.shape[1]
    pad = -n % multiple
    if not pad:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
    lengths = jnp.full((q.shape[0],), n, jnp.int32)
    y = jax.nn.dot_product_attention(
        q,
        k,
        v,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return y[:, :n]


# Attention kernels accepted by ``attention_impl``.
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection; sows its mean entropy."""

    num_heads: int
    attention_dropout_rate: float = 0.0
    dropout_rate: float = 0.0
    sigma_reparam: bool = False
    dtype: Any = jnp.float32
    attention_impl: str = "einsum"

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}."
            )
        b, n, d = x.shape
        dense = functools.partial(
            transformer_dense, sigma_reparam=self.sigma_reparam, train=train, dtype=self.dtype
        )
        # Output layout [3, heads, head_dim], as timm's reshape of its fused qkv.
        qkv = dense(features=3 * d, name="qkv")(x).reshape(
            b, n, 3, self.num_heads, d // self.num_heads
        )
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        fused = self.attention_impl != "einsum" and not (
            # The entropy probe and attention dropout need the probabilities themselves.
            self.is_mutable_collection("intermediates") or (train and self.attention_dropout_rate)
        )
        if fused:
            # cuDNN's fused kernels refuse odd token counts (ViT-B/16: 197) in training.
            multiple = 8 if self.attention_impl == "cudnn" else 1
            y = padded_attention(q, k, v, implementation=self.attention_impl, multiple=multiple)
            return self._project(y.reshape(b, n, d), dense, train)
        q = q * (d // self.num_heads) ** -0.5
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        # Softmax in float32 so that bf16 compute keeps a normalized distribution.
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        # Mean over batch, heads and queries of -sum_k p log p; in [0, log n].
        entropy = -jnp.sum(jax.scipy.special.xlogy(probs, probs), axis=-1)
        self.sow("intermediates", "attention_entropy", jnp.mean(entropy))
        probs = nn.Dropout(rate=self.attention_dropout_rate, deterministic=not train)(probs)
        y = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v).reshape(b, n, d)
        return self._project(y, dense, train)

    def _project(self, y, dense, train: bool):
        y = dense(features=y.shape[-1], name="proj")(y)
        return nn.Dropout(rate=self.dropout_rate, deterministic=not train)(y)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    num_heads: int
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    sigma_reparam: bool = False
    dtype: Any = jnp.float32
    attention_impl: str = "einsum"

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(nn.LayerNorm, epsilon=LN_EPS, dtype=self.dtype)
        drop_path = DropPath(rate=self.drop_path_rate)
        y = Attention(
            num_heads=self.num_heads,
            attention_dropout_rate=self.attention_dropout_rate,
            dropout_rate=self.dropout_rate,
            sigma_reparam=self.sigma_reparam,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name="attn",
        )(norm(name="norm1")(x), train=train)
        x = x + drop_path(y, train=train)
        y = Mlp(
            hidden=int(x.shape[-1] * self.mlp_ratio),
            dropout_rate=self.dropout_rate,
            sigma_reparam=self.sigma_reparam,
            dtype=self.dtype,
            name="mlp",
        )(norm(name="norm2")(x), train=train)
        return x + drop_path(y, train=train)


class ViT(nn.Module):
    """A Vision Transformer for NHWC images.

    Attributes:
      depth: number of transformer blocks.
      embed_dim: token width before ``width_multiplier``.
      num_heads: attention heads before ``width_multiplier``.
      width_multiplier: scales the width keeping the head dimension
        ``embed_dim // num_heads`` constant: the number of heads becomes
        ``max(1, round(num_heads * width_multiplier))`` and the width is heads x
        head dimension (the ViT-Ti/S/B scaling of Touvron et al. 2021).
      mlp_ratio: MLP hidden size / width.
      patch_size: side of the square patches (16 or 32 for the registered names).
      image_size: input resolution; the position embeddings have
        ``(image_size // patch_size) ** 2 + 1`` entries, and other inputs are refused.
      num_classes: size of the classifier output.
      dropout_rate: dropout after the position embedding, in the MLP and after
        the attention projection.
      attention_dropout_rate: dropout on the attention probabilities.
      drop_path_rate: stochastic depth, rising linearly to this rate at the last block.
      sigma_reparam: σReparam on every Dense layer of the blocks (Zhai et al. 2023).
      dtype: computation dtype; parameters are kept in float32, logits are float32.
      attention_impl: ``"einsum"`` (explicit softmax in float32) or a
        ``jax.nn.dot_product_attention`` implementation: ``"xla"``, or ``"cudnn"``
        (fused flash attention on NVIDIA GPUs, bf16/fp16 only). The fused kernels
        fall back to the einsum path when the entropy probe is collected or attention
        dropout is on, since both need the probabilities.
    """

    depth: int = 12
    embed_dim: int = 768
    num_heads: int = 12
    width_multiplier: float = 1.0
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 224
    num_classes: int = 1000
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    sigma_reparam: bool = False
    dtype: Any = jnp.float32
    attention_impl: str = "einsum"

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        check_patch_input("ViT", x, self.image_size, self.patch_size)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.num_heads}.")
        heads = max(1, round(self.num_heads * self.width_multiplier))
        width = heads * (self.embed_dim // self.num_heads)
        p = self.patch_size
        x = nn.Conv(
            features=width, kernel_size=(p, p), strides=p, padding="VALID",
            kernel_init=trunc_normal, dtype=self.dtype, name="patch_embed",
        )(x.astype(self.dtype))  # fmt: skip
        x = x.reshape(x.shape[0], -1, width)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, width)).astype(x.dtype), x], 1)
        pos = self.param("pos_embed", trunc_normal, (1, x.shape[1], width), jnp.float32)
        x = nn.Dropout(rate=self.dropout_rate, deterministic=not train)(x + pos.astype(self.dtype))
        for i in range(self.depth):
            x = Block(
                num_heads=heads,
                mlp_ratio=self.mlp_ratio,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=self.drop_path_rate * i / max(1, self.depth - 1),
                sigma_reparam=self.sigma_reparam,
                dtype=self.dtype,
                attention_impl=self.attention_impl,
                name=f"block{i}",
            )(x, train=train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
        x = nn.Dense(
            features=self.num_classes, dtype=self.dtype, kernel_init=trunc_normal, name="head"
        )(x[:, 0])
        return x.astype(jnp.float32)


def attention_entropies(intermediates: Mapping[str, Any]) -> jax.Array:
    """Per-layer mean attention entropy, ``[depth]``, from a ViT's ``intermediates``.

    Args:
      intermediates: the ``intermediates`` collection returned by
        ``model.apply(variables, x, mutable=["intermediates"])``.

    Returns:
      Entropies (nats) ordered by block; each lies in ``[0, log(num_tokens)]``.

    Example:
      >>> _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
      >>> attention_entropies(state["intermediates"])
    """
    blocks = sorted((k for k in intermediates if k.startswith("block")), key=lambda k: int(k[5:]))
    return jnp.stack([intermediates[k]["attn"]["attention_entropy"][0] for k in blocks])


_VARIANTS = {  # name: (embed_dim, depth, num_heads, patch_size)
    "vit_tiny_patch16_224": (192, 12, 3, 16),
    "vit_small_patch16_224": (384, 12, 6, 16),
    "vit_base_patch16_224": (768, 12, 12, 16),
    "vit_large_patch16_224": (1024, 24, 16, 16),
    "vit_small_patch32_224": (384, 12, 6, 32),
    "vit_base_patch32_224": (768, 12, 12, 32),
}


for _name, (_dim, _depth, _heads, _patch) in _VARIANTS.items():
    register(_name, tiny=dict(depth=2, embed_dim=32, num_heads=2, image_size=32))(
        functools.partial(ViT, embed_dim=_dim, depth=_depth, num_heads=_heads, patch_size=_patch)
    )


@register_converter(r"vit_(tiny|small|base|large)_patch(16|32)_224")
def _from_torch(arrays: Mapping[str, np.ndarray], name: str) -> dict:
    """timm ``VisionTransformer`` state dict -> variables (``sigma_reparam=False``)."""
    read = StateDictReader(arrays)
    params = {
        "patch_embed": {
            "kernel": read.conv("patch_embed.proj.weight"),
            "bias": read("patch_embed.proj.bias"),
        },
        "cls_token": read("cls_token"),
        "pos_embed": read("pos_embed"),
        "norm": read.layer_norm("norm"),
        "head": read.linear("head"),
    }
    i = 0
    while f"blocks.{i}.norm1.weight" in arrays:
        t = f"blocks.{i}"
        params[f"block{i}"] = {
            "norm1": read.layer_norm(f"{t}.norm1"),
            "attn": {
                "qkv": read.linear(f"{t}.attn.qkv"),
                "proj": read.linear(f"{t}.attn.proj"),
            },
            "norm2": read.layer_norm(f"{t}.norm2"),
            "mlp": {
                "fc1": read.linear(f"{t}.mlp.fc1"),
                "fc2": read.linear(f"{t}.mlp.fc2"),
            },
        }
        i += 1
    read.check_all_used()
    return {"params": params}
