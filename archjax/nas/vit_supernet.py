"""A weight-sharing ViT supernet: elastic depth, width, heads, MLP ratio and resolution.

ElasticViT (Tang et al., 2023) and AutoFormer train one ViT from which children of
many sizes are taken. Here a child (:class:`ViTArch`) uses the first ``depth``
blocks, the leading ``width`` channels of every token, ``heads`` attention heads of
``width // heads`` channels each (the leading channels of q, k and v, grouped in
order), the leading ``int(width * mlp_ratio)`` MLP channels, and
``(resolution / patch_size) ** 2`` patches, whose position embeddings are the
supernet's grid resized (bilinear) to the child's grid.

As in :mod:`archjax.nas.supernet`, the child enters :class:`SuperViT` as arrays
(block gates, width, heads, MLP width), so one compiled program per resolution runs
every child: inactive channels are exact zeros after every layer (LayerNorm
normalizes over the active channels only), a gated-off pre-LN block adds zero, and
attention groups the active channels into heads with a channel-to-head matrix.
:func:`archjax.nas.extract` slices the variables into a standalone registered
:class:`archjax.models.vit.ViT` (``embed_dim``, ``num_heads``, ``mlp_ratio``,
``image_size``) whose outputs equal the supernet's for that child up to float
summation order. One ``heads`` and one ``mlp_ratio`` per child (the registered ViT
has one of each); no dropout, no σReparam.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archjax import models
from archjax.layers import LN_EPS, trunc_normal
from archjax.models.vit import ViT


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTArch:
    """One ViT child: blocks, token width, heads, MLP ratio and input resolution."""

    depth: int
    width: int
    heads: int
    mlp_ratio: float
    resolution: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTSpace:
    """The choices of a ViT supernet; the supernet holds the largest of each.

    Attributes:
      depths: allowed numbers of blocks.
      widths: allowed token widths; each divisible by every ``heads`` choice.
      heads: allowed numbers of attention heads.
      mlp_ratios: allowed MLP hidden / width ratios.
      resolutions: allowed input resolutions, multiples of ``patch_size``.
      patch_size: side of the square patches.
      num_classes: classifier outputs.
    """

    depths: tuple[int, ...] = (1, 2)
    widths: tuple[int, ...] = (8, 16)
    heads: tuple[int, ...] = (1, 2)
    mlp_ratios: tuple[float, ...] = (1.0, 2.0)
    resolutions: tuple[int, ...] = (8,)
    patch_size: int = 2
    num_classes: int = 10

    def __post_init__(self):
        for name, positive_int in (("depths", True), ("widths", True), ("heads", True),
                                   ("mlp_ratios", False), ("resolutions", True)):  # fmt: skip
            choices = getattr(self, name)
            if not choices:
                raise ValueError(f"ViTSpace.{name} is an empty choice.")
            bad = [c for c in choices if not c > 0 or (positive_int and int(c) != c)]
            if bad:
                kind = "positive integers" if positive_int else "positive numbers"
                raise ValueError(f"ViTSpace.{name} must hold {kind}: {choices}.")
        for w in self.widths:
            for h in self.heads:
                if w % h:
                    raise ValueError(
                        f"ViTSpace.widths has {w}, not divisible by heads {h} (every width "
                        "must split into every number of heads)."
                    )
            for r in self.mlp_ratios:
                if int(w * r) < 1:
                    raise ValueError(f"ViTSpace.mlp_ratios {r} gives width {w} no MLP channel.")
        for r in self.resolutions:
            if r % self.patch_size:
                raise ValueError(
                    f"ViTSpace.resolutions has {r}, not a multiple of patch_size {self.patch_size}."
                )

    def largest(self) -> ViTArch:
        return ViTArch(**{k: max(c) for k, c in self.choices().items()})

    def smallest(self) -> ViTArch:
        return ViTArch(**{k: min(c) for k, c in self.choices().items()})

    def choices(self) -> dict[str, tuple]:
        """The allowed values of each field of a :class:`ViTArch` (a search's genes)."""
        return {"depth": tuple(self.depths), "width": tuple(self.widths),
                "heads": tuple(self.heads), "mlp_ratio": tuple(self.mlp_ratios),
                "resolution": tuple(self.resolutions)}  # fmt: skip

    def sample(self, rng: np.random.Generator) -> ViTArch:
        """A uniformly random child."""
        pick = lambda c: c[int(rng.integers(len(c)))]
        return ViTArch(**{k: pick(c) for k, c in self.choices().items()})

    def check(self, arch: ViTArch) -> None:
        """Raises a ValueError naming the first choice of ``arch`` outside the space."""
        for name, choices in self.choices().items():
            value = getattr(arch, name)
            if value not in choices:
                top = " (above the supernet's)" if value > max(choices) else ""
                raise ValueError(f"arch.{name} = {value}{top} is not one of {choices}.")

    def hidden(self, arch: ViTArch) -> int:
        """The child's MLP width, as the registered ViT computes it."""
        return int(arch.width * arch.mlp_ratio)

    def encode(self, arch: ViTArch) -> dict[str, jax.Array]:
        """The child as the supernet's array inputs (one compiled program for all)."""
        self.check(arch)
        return {
            "gates": jnp.asarray([float(i < arch.depth) for i in range(max(self.depths))]),
            "width": jnp.asarray(arch.width, jnp.int32),
            "heads": jnp.asarray(arch.heads, jnp.int32),
            "hidden": jnp.asarray(self.hidden(arch), jnp.int32),
        }

    def sample_encoding(self, key: jax.Array) -> dict[str, jax.Array]:
        """A uniformly random child as arrays, drawn on the device (the sandwich step's)."""
        k = jax.random.split(key, 4)
        depth = jax.random.choice(k[0], jnp.asarray(self.depths))
        w = jax.random.randint(k[1], (), 0, len(self.widths))
        r = jax.random.randint(k[3], (), 0, len(self.mlp_ratios))
        # int(width * ratio) on the host, so the device draws exactly the encode()'d value.
        table = [[int(w_ * r_) for r_ in self.mlp_ratios] for w_ in self.widths]
        return {
            "gates": (jnp.arange(max(self.depths)) < depth).astype(jnp.float32),
            "width": jnp.asarray(self.widths, jnp.int32)[w],
            "heads": jax.random.choice(k[2], jnp.asarray(self.heads, jnp.int32)),
            "hidden": jnp.asarray(table, jnp.int32)[w, r],
        }

    def child(self, arch: ViTArch) -> ViT:
        """The standalone registered model of ``arch`` (see :func:`archjax.nas.extract`)."""
        self.check(arch)
        return models.create("vit_tiny_patch16_224", depth=arch.depth, embed_dim=arch.width,
                             num_heads=arch.heads, mlp_ratio=arch.mlp_ratio,
                             patch_size=self.patch_size, image_size=arch.resolution,
                             num_classes=self.num_classes)  # fmt: skip

    def cost(self, arch: ViTArch, *, channels: int = 3) -> dict[str, int]:
        """Exact ``params`` and shape ``macs`` of the child (one image), from ``arch``.

        MACs as :func:`archjax.quant.report` counts them: every Dense and the patch
        convolution, plus the two attention products (``n * n * width`` each).
        """
        self.check(arch)
        w, p, hid = arch.width, self.patch_size, self.hidden(arch)
        n = (arch.resolution // p) ** 2 + 1
        block_params = 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * hid + hid) \
            + (hid * w + w)  # fmt: skip
        params = (p * p * channels * w + w) + w + n * w + arch.depth * block_params + 2 * w
        params += w * self.num_classes + self.num_classes
        block_macs = n * 3 * w * w + 2 * n * n * w + n * w * w + 2 * n * w * hid
        macs = (n - 1) * p * p * channels * w + arch.depth * block_macs + w * self.num_classes
        return {"params": params, "macs": macs}

    def extract(self, variables: Any, arch: ViTArch) -> tuple[ViT, Any]:
        """See :func:`archjax.nas.extract`."""
        model = self.child(arch)
        w, hid, d = arch.width, self.hidden(arch), max(self.widths)
        grid = arch.resolution // self.patch_size
        src = variables["params"]
        lead = lambda a: a[..., :w]
        dense = lambda t, fan_in, fan_out: {"kernel": t["kernel"][:fan_in, :fan_out],
                                            "bias": t["bias"][:fan_out]}  # fmt: skip
        params = {
            "patch_embed": {"kernel": lead(src["patch_embed"]["kernel"]),
                            "bias": lead(src["patch_embed"]["bias"])},
            "cls_token": lead(src["cls_token"]),
            "pos_embed": lead(_pos_embed(src["pos_embed"], grid)),
            "norm": jax.tree.map(lead, src["norm"]),
            "head": {"kernel": src["head"]["kernel"][:w], "bias": src["head"]["bias"]},
        }  # fmt: skip
        for i in range(arch.depth):
            b = src[f"block{i}"]
            qkv = b["attn"]["qkv"]
            params[f"block{i}"] = {
                "norm1": jax.tree.map(lead, b["norm1"]),
                "norm2": jax.tree.map(lead, b["norm2"]),
                "attn": {
                    # [d, 3 * d] laid out as [d, (q|k|v), d]: each part's leading channels.
                    "qkv": {"kernel": qkv["kernel"].reshape(d, 3, d)[:w, :, :w].reshape(w, 3 * w),
                            "bias": qkv["bias"].reshape(3, d)[:, :w].reshape(3 * w)},
                    "proj": dense(b["attn"]["proj"], w, w),
                },
                "mlp": {"fc1": dense(b["mlp"]["fc1"], w, hid),
                        "fc2": dense(b["mlp"]["fc2"], hid, w)},
            }  # fmt: skip
        return model, {"params": params}


def _pos_embed(pos: jax.Array, grid: int) -> jax.Array:
    """``[1, 1 + G*G, d]`` position embeddings resized (bilinear) to ``grid x grid``."""
    big = int(round((pos.shape[1] - 1) ** 0.5))
    if grid == big:
        return pos
    cls, rest = pos[:, :1], pos[:, 1:].reshape(1, big, big, pos.shape[-1])
    rest = jax.image.resize(rest, (1, grid, grid, pos.shape[-1]), "bilinear")
    return jnp.concatenate([cls, rest.reshape(1, grid * grid, -1)], axis=1)


class _MaskedLayerNorm(nn.Module):
    """LayerNorm over the active channels only (``scale``/``bias`` as ``nn.LayerNorm``);
    mean and variance as flax computes them (``E[x^2] - E[x]^2``)."""

    @nn.compact
    def __call__(self, x, mask, width):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        n = width.astype(jnp.float32)
        mean = jnp.sum(x * mask, -1, keepdims=True) / n
        var = jnp.maximum(jnp.sum(jnp.square(x) * mask, -1, keepdims=True) / n - mean**2, 0.0)
        y = (x - mean) * jax.lax.rsqrt(var + LN_EPS)
        return (y * scale + bias) * mask


class _SuperBlock(nn.Module):
    """A pre-LN block with masked channels, heads and MLP width; names as ``vit.Block``."""

    features: int
    hidden: int
    max_heads: int

    @nn.compact
    def __call__(self, x, child, mask, gate):
        d, width, heads = self.features, child["width"], child["heads"]
        h = _MaskedLayerNorm(name="norm1")(x, mask, width)
        attn = _SuperAttention(d, self.max_heads, name="attn")
        x = x + gate * attn(h, mask, width, heads)
        h = _MaskedLayerNorm(name="norm2")(x, mask, width)
        hidden_mask = (jnp.arange(self.hidden) < child["hidden"]).astype(x.dtype)
        mlp = _SuperMlp(d, self.hidden, name="mlp")
        return x + gate * mlp(h, mask, hidden_mask)


class _SuperMlp(nn.Module):
    features: int
    hidden: int

    @nn.compact
    def __call__(self, x, mask, hidden_mask):
        y = nn.Dense(self.hidden, kernel_init=trunc_normal, name="fc1")(x)
        y = nn.gelu(y, approximate=False) * hidden_mask
        return nn.Dense(self.features, kernel_init=trunc_normal, name="fc2")(y) * mask


class _SuperAttention(nn.Module):
    """Attention whose ``heads`` heads split the leading ``width`` channels in order:
    a channel-to-head matrix does the child's reshape; inactive heads are empty."""

    features: int
    max_heads: int

    @nn.compact
    def __call__(self, x, mask, width, heads):
        d = self.features
        qkv = nn.Dense(3 * d, kernel_init=trunc_normal, name="qkv")(x)
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        head_dim = width // heads
        channel = jnp.arange(d)
        assign = (channel[:, None] // head_dim == jnp.arange(self.max_heads)[None, :]) & (
            channel[:, None] < width
        )
        assign = assign.astype(x.dtype)  # [d, max_heads]
        q = q * head_dim.astype(jnp.float32) ** -0.5
        logits = jnp.einsum("bqc,bkc,ch->bhqk", q, k, assign)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        y = jnp.einsum("bhqk,bkc,ch->bqc", probs, v, assign)
        return nn.Dense(d, kernel_init=trunc_normal, name="proj")(y) * mask


class SuperViT(nn.Module):
    """The supernet of a :class:`ViTSpace`; ``__call__(x, child, train=...)`` runs the
    child given by ``space.encode(arch)`` (the largest when ``child`` is None) at the
    resolution of ``x``. Variables have the names and (largest) shapes of the
    registered ViT, so :func:`archjax.nas.extract` is slicing."""

    space: ViTSpace

    @nn.compact
    def __call__(self, x, child: dict | None = None, *, train: bool = False):
        space = self.space
        child = space.encode(space.largest()) if child is None else child
        if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] not in space.resolutions:
            raise ValueError(
                f"SuperViT expects NHWC square images at one of {space.resolutions}, "
                f"got shape {x.shape}."
            )
        d, p = max(space.widths), space.patch_size
        hidden = max(int(w * r) for w in space.widths for r in space.mlp_ratios)
        mask = (jnp.arange(d) < child["width"]).astype(jnp.float32)
        x = nn.Conv(d, (p, p), strides=p, padding="VALID", kernel_init=trunc_normal,
                    name="patch_embed")(x.astype(jnp.float32)) * mask  # fmt: skip
        x = x.reshape(x.shape[0], -1, d)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls * mask, (x.shape[0], 1, d)), x], axis=1)
        tokens = (max(space.resolutions) // p) ** 2 + 1
        pos = self.param("pos_embed", trunc_normal, (1, tokens, d), jnp.float32)
        x = x + _pos_embed(pos, int(round((x.shape[1] - 1) ** 0.5))) * mask
        for i in range(max(space.depths)):
            gate = child["gates"][i] if i > 0 else 1.0  # a child keeps its first block
            x = _SuperBlock(d, hidden, max(space.heads), name=f"block{i}")(x, child, mask, gate)
        x = _MaskedLayerNorm(name="norm")(x, mask, child["width"])
        return nn.Dense(space.num_classes, kernel_init=trunc_normal, name="head")(x[:, 0])
