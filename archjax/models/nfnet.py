"""Normalizer-Free networks: NF-ResNet and NFNet-F0..F3.

Brock et al. 2021a, "Characterizing signal propagation to close the
performance gap in unnormalized ResNets" (NF-ResNets), and Brock et al. 2021b,
"High-Performance Large-Scale Image Recognition Without Normalization"
(NFNets). The layout follows timm's ``NormFreeNet`` so that timm weights import
one to one (``nf_resnet*``, ``dm_nfnet_f*``):

- pre-activation bottleneck blocks ``x + alpha * f(act(x) * beta)`` with no
  normalization layers; ``beta = 1 / sqrt(expected_var)`` where the expected
  variance grows by ``alpha**2`` per block and is reset to 1 after each
  transition block (whose shortcut is an average pool + 1x1 convolution);
- every convolution uses Scaled Weight Standardization
  (:class:`archjax.layers.ScaledStdConv`) with the activation's gamma either
  folded into the kernel (NF-ResNet) or applied after the activation
  (DeepMind NFNets, ``gamma_in_act=True``);
- the residual branch starts at zero: its last convolution's gain is 0, or,
  with ``skipinit=True`` (NFNets), a learnable scalar ``skipinit_gain`` is 0
  (SkipInit, De & Smith 2020);
- NFNets add a second grouped 3x3 convolution (``conv2b``), Squeeze-Excite
  after the block scaled by 2, GELU, TensorFlow "SAME" padding, a final 1x1
  convolution, and stochastic depth (``drop_path_rate``, linear in depth; it
  draws from the ``"dropout"`` rng only when ``train=True``).

Signal-propagation plots (Brock et al. 2021a, Sec. 4): every block sows the
average channel squared mean and average channel variance of its output and
the average channel variance of its residual branch into ``intermediates``::

    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    spp = signal_propagation(state["intermediates"])  # {"avg_var": [num_blocks], ...}

Knobs: ``stage_sizes`` (depth), ``width_multiplier`` (widths rounded to a
multiple of 8 as timm does), ``alpha``, ``drop_path_rate``, ``num_classes``,
``dtype``. When a bottleneck is narrower than ``group_size`` (small width
multipliers) its 3x3 convolutions use a single group.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archjax.layers import ScaledStdConv, SqueezeExcite, drop_path, make_divisible
from archjax.models.registry import register
from archjax.models.torch_import import StateDictReader, register_converter

# Variance-preserving gamma of each activation for unit-Gaussian input (timm's values).
NONLIN_GAMMA = {"relu": 1.7139588594436646, "gelu": 1.7015043497085571}
_ACTIVATIONS = {"relu": nn.relu, "gelu": functools.partial(nn.gelu, approximate=False)}
SPP_KEYS = ("avg_sq_mean", "avg_var", "res_avg_var")


def _avg_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2/2 average pool, ceil mode, padding excluded from the mean (torch's ``AvgPool2d``)."""
    pad = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


def _conv_factory(*, gamma: float, eps: float, same_padding: bool, dtype: Any):
    """Returns ``make(features, kernel_size, strides=1, **kw) -> ScaledStdConv``.

    A plain function (not a module method), so that the convolution belongs to
    the module that calls it.
    """

    def make(features, kernel_size, *, strides=1, **kwargs):
        padding = "SAME" if same_padding else (strides - 1 + kernel_size[0] - 1) // 2
        return ScaledStdConv(
            features,
            kernel_size,
            strides=strides,
            padding=padding,
            gamma=gamma,
            eps=eps,
            dtype=dtype,
            **kwargs,
        )

    return make


def _channel_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Average over channels of the squared channel mean and of the channel variance."""
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    return jnp.mean(jnp.square(jnp.mean(x, axis=axes))), jnp.mean(jnp.var(x, axis=axes))


class NFBlock(nn.Module):
    """Normalizer-free pre-activation bottleneck block (see the module docstring)."""

    features: int
    mid_features: int
    conv: Any  # a ScaledStdConv partial
    act: Any  # activation, gamma included when it is applied after the activation
    strides: int = 1
    groups: int = 1
    alpha: float = 0.2
    beta: float = 1.0
    extra_conv: bool = False
    se_ratio: float = 0.0
    attn_gain: float = 2.0
    skipinit: bool = False
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        out = self.act(x) * self.beta
        shortcut = x
        if x.shape[-1] != self.features or self.strides != 1:
            pooled = _avg_pool_ceil(out) if self.strides > 1 else out
            shortcut = self.conv(self.features, (1, 1), name="downsample_conv")(pooled)
        out = self.conv(self.mid_features, (1, 1), name="conv1")(out)
        grouped = functools.partial(self.conv, feature_group_count=self.groups)
        out = grouped(self.mid_features, (3, 3), strides=self.strides, name="conv2")(self.act(out))
        if self.extra_conv:
            out = grouped(self.mid_features, (3, 3), name="conv2b")(self.act(out))
        gain_init = 1.0 if self.skipinit else 0.0
        out = self.conv(self.features, (1, 1), gain_init=gain_init, name="conv3")(self.act(out))
        if self.se_ratio:
            se = SqueezeExcite(self.se_ratio, dtype=self.dtype, name="se")
            out = self.attn_gain * se(out)
        out = drop_path(self, out, self.drop_path_rate, train=train)
        if self.skipinit:
            out = out * self.param("skipinit_gain", nn.initializers.zeros, (), jnp.float32)
        y = out * self.alpha + shortcut
        if self.is_mutable_collection("intermediates"):
            sq_mean, var = _channel_stats(y)
            for key, value in zip(SPP_KEYS, (sq_mean, var, _channel_stats(out)[1]), strict=True):
                self.sow("intermediates", key, value)
        return y


class NFNet(nn.Module):
    """A Normalizer-Free ResNet/NFNet for NHWC images.

    Attributes:
      stage_sizes: number of blocks in each stage (depth knob).
      widths: output channels of each stage before ``width_multiplier``.
      stem: ``"7x7_pool"`` (NF-ResNet: 7x7/2 conv + 3x3/2 max pool) or
        ``"deep_quad"`` (NFNet: four 3x3 convs, strides 2, 1, 1, 2).
      stem_width: stem output channels before ``width_multiplier``.
      bottle_ratio: bottleneck width as a fraction of the block output.
      group_size: channels per group of the 3x3 convolutions (``None``: dense).
      extra_conv: add the NFNet's second 3x3 convolution.
      se_ratio: Squeeze-Excite reduction ratio (0: no SE).
      num_features: width of the final 1x1 convolution (0: none).
      activation: ``"relu"`` or ``"gelu"``.
      gamma_in_act: apply the activation's gamma after the activation (DeepMind)
        rather than folding it into the convolutions (timm's NF-ResNets).
      same_padding: TensorFlow "SAME" padding instead of symmetric padding.
      skipinit: learnable scalar ``skipinit_gain`` (init 0) on each residual branch.
      alpha: residual branch scale.
      std_conv_eps: epsilon of the weight standardization.
      width_multiplier: multiplies every width (width knob).
      drop_path_rate: stochastic-depth rate of the last block (linear in depth).
      num_classes: size of the classifier output.
      dtype: computation dtype; parameters are kept in float32.
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int] = (256, 512, 1024, 2048)
    stem: Literal["7x7_pool", "deep_quad"] = "7x7_pool"
    stem_width: int = 64
    bottle_ratio: float = 0.25
    group_size: int | None = None
    extra_conv: bool = False
    se_ratio: float = 0.0
    num_features: int = 0
    activation: Literal["relu", "gelu"] = "relu"
    gamma_in_act: bool = False
    same_padding: bool = False
    skipinit: bool = False
    alpha: float = 0.2
    std_conv_eps: float = 1e-5
    width_multiplier: float = 1.0
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        if x.ndim != 4:
            raise ValueError(f"NFNet expects NHWC images, got shape {x.shape}.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}.")
        if self.stem not in ("7x7_pool", "deep_quad"):
            raise ValueError(f"stem must be '7x7_pool' or 'deep_quad', got {self.stem!r}.")
        fn, gamma = _ACTIVATIONS[self.activation], NONLIN_GAMMA[self.activation]
        act = (lambda v: fn(v) * gamma) if self.gamma_in_act else fn
        conv = _conv_factory(
            gamma=1.0 if self.gamma_in_act else gamma,
            eps=self.std_conv_eps,
            same_padding=self.same_padding,
            dtype=self.dtype,
        )
        width = lambda c: make_divisible(c * self.width_multiplier, 8)
        x = x.astype(self.dtype)
        stem_width = width(self.stem_width)
        if self.stem == "7x7_pool":
            x = conv(stem_width, (7, 7), strides=2, name="stem_conv")(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            chans = (stem_width // 8, stem_width // 4, stem_width // 2, stem_width)
            for i, (c, s) in enumerate(zip(chans, (2, 1, 1, 2), strict=True)):
                x = conv(c, (3, 3), strides=s, name=f"stem_conv{i + 1}")(x)
                x = act(x) if i < 3 else x
        total = sum(self.stage_sizes)
        rates = np.linspace(0.0, self.drop_path_rate, total) if total else []
        expected_var, idx = 1.0, 0
        for i, num_blocks in enumerate(self.stage_sizes):
            out = width(self.widths[i])
            mid = make_divisible(out * self.bottle_ratio, 8)
            groups = 1
            if self.group_size:
                groups = max(1, mid // self.group_size)
                if self.group_size % 8 == 0 and mid >= self.group_size:
                    mid = self.group_size * groups
            for j in range(num_blocks):
                x = NFBlock(
                    features=out,
                    mid_features=mid,
                    conv=conv,
                    act=act,
                    strides=2 if i > 0 and j == 0 else 1,
                    groups=groups,
                    alpha=self.alpha,
                    beta=1.0 / math.sqrt(expected_var),
                    extra_conv=self.extra_conv,
                    se_ratio=self.se_ratio,
                    skipinit=self.skipinit,
                    drop_path_rate=float(rates[idx]),
                    dtype=self.dtype,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)
                expected_var = (1.0 if j == 0 else expected_var) + self.alpha**2
                idx += 1
        if self.num_features:
            x = conv(width(self.num_features), (1, 1), name="final_conv")(x)
        x = jnp.mean(act(x), axis=(1, 2))
        head_init = nn.initializers.normal(0.01)
        x = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def signal_propagation(intermediates: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-block signal-propagation statistics in network order.

    Args:
      intermediates: ``state["intermediates"]`` from
        ``model.apply(..., mutable=["intermediates"])`` on an :class:`NFNet`.

    Returns:
      ``{"avg_sq_mean", "avg_var", "res_avg_var"}`` -> ``[num_blocks]`` arrays:
      average channel squared mean and variance of each block's output, and
      average channel variance of its residual branch (Brock et al. 2021a).

    Example:
      >>> _, state = model.apply(v, x, train=False, mutable=["intermediates"])
      >>> signal_propagation(state["intermediates"])["avg_var"]
    """
    order = lambda k: tuple(int(n) for n in re.findall(r"\d+", k))
    blocks = sorted((k for k in intermediates if k.startswith("stage")), key=order)
    return {
        key: np.array([np.asarray(intermediates[b][key][-1]) for b in blocks]) for key in SPP_KEYS
    }


def _nf_resnet(**kwargs) -> NFNet:
    """timm's ``nf_resnet*``: ReLU, gamma folded into the convs, 7x7 stem + max pool."""
    return NFNet(**kwargs)


def _dm_nfnet(**kwargs) -> NFNet:
    """timm's ``dm_nfnet_f*`` (DeepMind's NFNet-F, Brock et al. 2021b, Table 1)."""
    defaults = dict(
        widths=(256, 512, 1536, 1536),
        stem="deep_quad",
        stem_width=128,
        bottle_ratio=0.5,
        group_size=128,
        extra_conv=True,
        se_ratio=0.5,
        num_features=3072,
        activation="gelu",
        gamma_in_act=True,
        same_padding=True,
        skipinit=True,
    )
    return NFNet(**{**defaults, **kwargs})


_TINY = {"width_multiplier": 1 / 16, "stage_sizes": (1, 1, 1, 1)}
for _name, _depths in {"26": (2, 2, 2, 2), "50": (3, 4, 6, 3), "101": (3, 4, 23, 3)}.items():
    register(f"nf_resnet{_name}", tiny=_TINY)(functools.partial(_nf_resnet, stage_sizes=_depths))
for _i, _depths in enumerate([(1, 2, 6, 3), (2, 4, 12, 6), (3, 6, 18, 9), (4, 8, 24, 12)]):
    register(f"dm_nfnet_f{_i}", tiny=_TINY)(functools.partial(_dm_nfnet, stage_sizes=_depths))


@register_converter(r"nf_resnet(26|50|101)|dm_nfnet_f[0-3]")
def _from_torch(arrays, name: str) -> dict:
    """timm state dict -> variables (timm's layer order; NF nets have no ``batch_stats``)."""
    del name
    read = StateDictReader(arrays)

    def conv(prefix: str) -> dict:
        return {
            "kernel": read.conv(f"{prefix}.weight"),
            "bias": read(f"{prefix}.bias"),
            "gain": read(f"{prefix}.gain").reshape(-1),
        }

    def dense_1x1(prefix: str) -> dict:  # SE's 1x1 convs are Dense layers here
        w = read(f"{prefix}.weight")
        return {"kernel": w.reshape(w.shape[:2]).T, "bias": read(f"{prefix}.bias")}

    params = {}
    for key in arrays:
        if m := re.fullmatch(r"stem\.(conv\d?)\.weight", key):
            params[f"stem_{m[1]}"] = conv(f"stem.{m[1]}")
    for key in sorted(k for k in arrays if re.fullmatch(r"stages\.\d+\.\d+\.conv1\.weight", k)):
        i, j = (int(n) for n in key.split(".")[1:3])
        prefix, block = f"stages.{i}.{j}", {}
        for c in ("conv1", "conv2", "conv2b", "conv3"):
            if f"{prefix}.{c}.weight" in arrays:
                block[c] = conv(f"{prefix}.{c}")
        if f"{prefix}.downsample.conv.weight" in arrays:
            block["downsample_conv"] = conv(f"{prefix}.downsample.conv")
        if f"{prefix}.attn_last.fc1.weight" in arrays:
            block["se"] = {
                "fc1": dense_1x1(f"{prefix}.attn_last.fc1"),
                "fc2": dense_1x1(f"{prefix}.attn_last.fc2"),
            }
        if f"{prefix}.skipinit_gain" in arrays:
            block["skipinit_gain"] = read(f"{prefix}.skipinit_gain").reshape(())
        params[f"stage{i + 1}_block{j + 1}"] = block
    if "final_conv.weight" in arrays:
        params["final_conv"] = conv("final_conv")
    params["head"] = {"kernel": read.dense("head.fc.weight"), "bias": read("head.fc.bias")}
    read.check_all_used()
    return {"params": params}
