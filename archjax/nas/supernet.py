"""A weight-sharing ResNet supernet: elastic depth, width, kernel size and resolution.

BigNAS (Yu et al., 2020) trains one set of weights from which child networks of
many sizes are taken "without extra retraining"; a child uses the leading channels
of each layer, the first blocks of each stage and the centre of larger kernels.

Here a child is an :class:`Arch`. The supernet (:class:`SuperResNet`) runs any child
of its :class:`ResNetSpace` in ONE compiled program per resolution: the child enters
as arrays (channel masks, block gates, kernel masks), so the sandwich rule's random
children never recompile. Masking computes what slicing computes: masked channels
are exact zeros after every normalization, a gated-off block returns its input (a
post-ReLU input passes ``relu(x + 0)`` unchanged) and a masked kernel is zero
outside its centre. :func:`extract` slices the variables into a standalone
registered :class:`archjax.models.ResNet` (``stage_widths``, ``kernel_sizes``) whose
outputs equal the supernet's for that child up to float summation order.

Only the CIFAR-style basic-block ResNet (3x3 stem without pooling, BatchNorm) is
elastic here; the stem has the first stage's width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archjax import models
from archjax.layers import norm_layer
from archjax.models.resnet_blocks import conv_init


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arch:
    """One child: blocks, width and kernel size per stage, and the input resolution."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    kernels: tuple[int, ...]
    resolution: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetSpace:
    """The choices of each stage; the supernet holds the largest of each.

    Attributes:
      depths: per stage, the allowed numbers of blocks (>= 1).
      widths: per stage, the allowed widths (channels).
      kernels: the allowed kernel sizes (odd), the same for every stage.
      resolutions: the allowed input resolutions.
      num_classes: classifier outputs.
    """

    depths: tuple[tuple[int, ...], ...] = ((1, 2, 3),) * 3
    widths: tuple[tuple[int, ...], ...] = ((8, 12, 16), (16, 24, 32), (32, 48, 64))
    kernels: tuple[int, ...] = (3, 5)
    resolutions: tuple[int, ...] = (8,)
    num_classes: int = 10

    def __post_init__(self):
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(
                f"depths has {len(self.depths)} stages and widths {len(self.widths)}; "
                "give the same number (>= 1)."
            )
        named = {"kernels": self.kernels, "resolutions": self.resolutions}
        named.update({f"depths[{i}]": c for i, c in enumerate(self.depths)})
        named.update({f"widths[{i}]": c for i, c in enumerate(self.widths)})
        for name, choices in named.items():
            if not choices:
                raise ValueError(f"ResNetSpace.{name} is an empty choice.")
            if any(int(c) != c or c < 1 for c in choices):
                raise ValueError(f"ResNetSpace.{name} must hold positive integers: {choices}.")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"ResNetSpace.kernels must be odd: {self.kernels}.")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def largest(self) -> Arch:
        return Arch(
            depths=tuple(max(c) for c in self.depths),
            widths=tuple(max(c) for c in self.widths),
            kernels=(max(self.kernels),) * self.num_stages,
            resolution=max(self.resolutions),
        )

    def smallest(self) -> Arch:
        return Arch(
            depths=tuple(min(c) for c in self.depths),
            widths=tuple(min(c) for c in self.widths),
            kernels=(min(self.kernels),) * self.num_stages,
            resolution=min(self.resolutions),
        )

    def sample(self, rng: np.random.Generator, *, resolution: int | None = None) -> Arch:
        """A uniformly random child (at ``resolution`` if given)."""
        pick = lambda c: int(c[rng.integers(len(c))])
        return Arch(
            depths=tuple(pick(c) for c in self.depths),
            widths=tuple(pick(c) for c in self.widths),
            kernels=tuple(pick(self.kernels) for _ in self.depths),
            resolution=pick(self.resolutions) if resolution is None else resolution,
        )

    def check(self, arch: Arch) -> None:
        """Raises a ValueError naming the first choice of ``arch`` outside the space."""
        for name in ("depths", "widths", "kernels"):
            if len(getattr(arch, name)) != self.num_stages:
                raise ValueError(
                    f"arch.{name} has {len(getattr(arch, name))} entries for "
                    f"{self.num_stages} stages."
                )
        for i in range(self.num_stages):
            for name, value, choices in (
                ("depths", arch.depths[i], self.depths[i]),
                ("widths", arch.widths[i], self.widths[i]),
                ("kernels", arch.kernels[i], self.kernels),
            ):
                if value not in choices:
                    top = " (above the supernet's)" if value > max(choices) else ""
                    raise ValueError(
                        f"arch.{name}[{i}] = {value}{top} is not one of {tuple(choices)}."
                    )
        if arch.resolution not in self.resolutions:
            raise ValueError(
                f"arch.resolution = {arch.resolution} is not one of {self.resolutions}."
            )

    def choices(self) -> dict[str, tuple[int, ...]]:
        """The allowed values of each field of an :class:`Arch` (``widths[1]``: stage 2's
        width); a search mutates these genes."""
        out: dict[str, tuple[int, ...]] = {}
        for name, per_stage in (("depths", self.depths), ("widths", self.widths)):
            out.update({f"{name}[{i}]": tuple(c) for i, c in enumerate(per_stage)})
        out.update({f"kernels[{i}]": tuple(self.kernels) for i in range(self.num_stages)})
        out["resolution"] = tuple(self.resolutions)
        return out

    def cost(self, arch: Arch, *, channels: int = 3) -> dict[str, int]:
        """Exact ``params`` and ``macs`` of the child (one image), counted from ``arch``.

        ``macs`` is the shape count of papers (every output element of a convolution
        costs ``k * k * cin`` multiply-adds, zero padding included, as
        :func:`archjax.quant.report`), so no child is compiled to be costed.
        """
        self.check(arch)
        size, cin = arch.resolution, channels
        params = macs = 0

        def conv(k, fan_in, fan_out, out_size):
            nonlocal params, macs
            params += k * k * fan_in * fan_out + 2 * fan_out  # + its BatchNorm scale/bias
            macs += out_size * out_size * k * k * fan_in * fan_out

        conv(3, cin, arch.widths[0], size)
        cin = arch.widths[0]
        for i in range(self.num_stages):
            w, k = arch.widths[i], arch.kernels[i]
            for j in range(arch.depths[i]):
                stride = 2 if i > 0 and j == 0 else 1
                size = -(-size // stride)
                conv(k, cin, w, size)
                conv(k, w, w, size)
                if stride != 1 or cin != w:
                    conv(1, cin, w, size)
                cin = w
        params += cin * self.num_classes + self.num_classes
        macs += cin * self.num_classes
        return {"params": params, "macs": macs}

    def sample_encoding(self, key: jax.Array) -> dict[str, jax.Array]:
        """A uniformly random child as the supernet's array inputs, drawn on the device
        (the sandwich step's random children; the resolution is the batch's)."""
        keys = jax.random.split(key, 3)

        def pick(key, per_stage):
            keys = jax.random.split(key, len(per_stage))
            picks = zip(keys, per_stage, strict=True)
            return jnp.stack([jax.random.choice(k, jnp.asarray(c)) for k, c in picks])

        depths = pick(keys[0], self.depths)
        gates = jnp.arange(max(max(c) for c in self.depths))[None, :] < depths[:, None]
        return {
            "gates": gates.astype(jnp.float32),
            "widths": pick(keys[1], self.widths).astype(jnp.int32),
            "kernels": jax.random.choice(
                keys[2], jnp.asarray(self.kernels), (self.num_stages,)
            ).astype(jnp.int32),
        }

    def encode(self, arch: Arch) -> dict[str, jax.Array]:
        """The child as the supernet's array inputs (one compiled program for all)."""
        self.check(arch)
        big = self.largest()
        return {
            "gates": jnp.asarray(
                [[float(j < d) for j in range(max(big.depths))] for d in arch.depths]
            ),
            "widths": jnp.asarray(arch.widths, jnp.int32),
            "kernels": jnp.asarray(arch.kernels, jnp.int32),
        }

    def extract(self, variables: Any, arch: Arch) -> tuple[models.ResNet, Any]:
        """See :func:`extract`."""
        return _extract(self, variables, arch)

    def child(self, arch: Arch) -> models.ResNet:
        """The standalone registered model of ``arch`` (see :func:`extract`)."""
        self.check(arch)
        return models.create(
            "resnet20",
            stage_sizes=arch.depths,
            stage_widths=arch.widths,
            kernel_sizes=arch.kernels,
            num_classes=self.num_classes,
        )


def _channel_mask(width: int, active, dtype) -> jax.Array:
    return (jnp.arange(width) < active).astype(dtype)


def _kernel_mask(size: int, active, dtype) -> jax.Array:
    """``[size, size, 1, 1]``: ones on the centred ``active x active`` square."""
    r = jnp.abs(jnp.arange(size) - (size - 1) // 2)
    inside = (2 * r + 1) <= active
    return (inside[:, None] & inside[None, :]).astype(dtype)[:, :, None, None]


class _MaskedConv(nn.Module):
    """A bias-free SAME convolution whose kernel is multiplied by a mask (the centre of
    the largest kernel); the masked-off entries get zero gradient, as in the child."""

    features: int
    size: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, kernel_mask):
        shape = (self.size, self.size, x.shape[-1], self.features)
        kernel = self.param("kernel", conv_init, shape, jnp.float32) * kernel_mask
        pad = (self.size - 1) // 2
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (self.strides, self.strides),
            [(pad, pad), (pad, pad)],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class _SuperBlock(nn.Module):
    """A basic block with masked channels and kernels; names as in ``BasicBlock``."""

    features: int
    size: int
    strides: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, kernel_mask, gate, *, train: bool):
        bn = functools.partial(norm_layer, "batch", train=train, dtype=self.dtype)
        conv = functools.partial(_MaskedConv, self.features, self.size, dtype=self.dtype)
        y = conv(strides=self.strides, name="conv1")(x, kernel_mask)
        y = nn.relu(bn(name="bn1")(y)) * mask
        y = bn(name="bn2")(conv(name="conv2")(y, kernel_mask)) * mask
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = nn.Conv(
                self.features,
                (1, 1),
                strides=self.strides,
                use_bias=False,
                kernel_init=conv_init,
                dtype=self.dtype,
                name="downsample_conv",
            )(x)
            shortcut = bn(name="downsample_bn")(shortcut) * mask
        return nn.relu(shortcut + gate * y)


class SuperResNet(nn.Module):
    """The supernet of a :class:`ResNetSpace`; ``__call__(x, child, train=...)`` runs the
    child given by ``space.encode(arch)`` (the largest child when ``child`` is None).

    Its variables have the names and (largest) shapes of the registered ResNet of the
    largest child, so :func:`extract` is slicing.
    """

    space: ResNetSpace
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, child: dict | None = None, *, train: bool = False):
        space, big = self.space, self.space.largest()
        child = space.encode(big) if child is None else child
        size = max(space.kernels)
        x = nn.Conv(
            big.widths[0],
            (3, 3),
            padding=1,
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            name="stem_conv",
        )(x.astype(self.dtype))
        bn = norm_layer("batch", train=train, dtype=self.dtype, name="stem_bn")
        x = nn.relu(bn(x)) * _channel_mask(big.widths[0], child["widths"][0], self.dtype)
        for i in range(space.num_stages):
            mask = _channel_mask(big.widths[i], child["widths"][i], self.dtype)
            kernel_mask = _kernel_mask(size, child["kernels"][i], self.dtype)
            for j in range(big.depths[i]):
                gate = child["gates"][i, j] if j > 0 else 1.0  # a stage keeps its first block
                x = _SuperBlock(
                    big.widths[i],
                    size,
                    2 if i > 0 and j == 0 else 1,
                    dtype=self.dtype,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, mask, kernel_mask, gate, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(space.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def _slice(path: tuple[str, ...], leaf: jax.Array, arch: Arch, space: ResNetSpace):
    """The child's part of one supernet variable (leading channels, centred kernel)."""
    top = path[0]
    if top == "head":
        return leaf[: arch.widths[-1]] if path[-1] == "kernel" else leaf
    if top.startswith("stem"):
        stage, block, layer = 0, None, top
    else:
        stage_name, block_name = top.split("_")
        stage, block, layer = int(stage_name[5:]) - 1, int(block_name[5:]) - 1, path[1]
    out = arch.widths[stage]
    if leaf.ndim == 1:  # BatchNorm scale/bias/mean/var
        return leaf[:out]
    if layer == "stem_conv":
        return leaf[:, :, :, :out]
    fan_in = (
        arch.widths[stage - 1]
        if (layer.startswith("downsample") or (layer == "conv1" and block == 0)) and stage > 0
        else out
    )
    if layer.startswith("downsample"):
        return leaf[:, :, :fan_in, :out]
    k, big = arch.kernels[stage], leaf.shape[0]
    lo = (big - k) // 2
    return leaf[lo : lo + k, lo : lo + k, :fan_in, :out]


def extract(space: Any, variables: Any, arch: Any) -> tuple[nn.Module, Any]:
    """The child ``arch`` as a standalone registered model and its own variables.

    Args:
      space: the supernet's space (:class:`ResNetSpace` or
        :class:`archjax.nas.ViTSpace`: any space with an ``extract`` method).
      variables: the supernet's variables (``params``, ``batch_stats``).
      arch: the child (checked against ``space``).

    Returns:
      ``(model, variables)``: ``model.apply(variables, x)`` equals the supernet's
      ``apply(variables, x, space.encode(arch))`` up to float summation order.

    Raises:
      ValueError: ``arch`` is not a child of ``space`` (the message names the field).

    Example:
      >>> model, child_vars = extract(space, supernet_vars, space.smallest())
    """
    return space.extract(variables, arch)


def _extract(space: ResNetSpace, variables: Any, arch: Arch) -> tuple[models.ResNet, Any]:
    """:func:`extract` for the ResNet space: slicing and dropping gated-off blocks."""
    model = space.child(arch)
    out = {}
    for collection, tree in variables.items():
        kept = {}
        for path, leaf in _flat(tree):
            top = path[0]
            if top.startswith("stage"):
                stage, block = (int(t[5:]) for t in top.split("_"))
                if block > arch.depths[stage - 1]:
                    continue
            _set(kept, path, _slice(path, leaf, arch, space))
        out[collection] = kept
    return model, out


def _flat(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            yield from _flat(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
