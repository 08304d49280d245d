"""VGG-11/13/16/19, with and without BatchNorm, laid out as timm's ``vgg*``.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition" (2015): stages of 3x3 convolutions (with bias), each stage ending in
a 2x2 max-pool; configurations A/B/D/E are VGG-11/13/16/19. The ``_bn``
variants put a BatchNorm after every convolution (Ioffe & Szegedy 2015).

The head is timm's: the two 4096-wide fully connected layers of the paper are
convolutions (a 7x7 "valid" one, then a 1x1), so the network runs at any
resolution; inputs whose final feature map is smaller than 7x7 are first
resampled to 7x7 by adaptive average pooling (as timm does), larger ones give a
map of logits-to-be that is averaged before the classifier (``head``). Parameter
counts equal timm's.

Knobs: ``stage_sizes`` (convolutions per stage, the depth knob),
``width_multiplier`` (scales every width, the head's too), ``num_classes``,
``batch_norm``, ``dropout_rate`` (timm's default 0; the paper used 0.5) and
``dtype`` (compute dtype; parameters stay fp32).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archjax.models.registry import create, register
from archjax.models.torch_import import StateDictReader, register_converter

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Convolutions per stage of configurations A, B, D, E (Simonyan & Zisserman, Table 1).
STAGE_SIZES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


def _pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[out, in] weights of torch's adaptive average pooling along one axis."""
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Adaptive average pooling of NHWC ``x`` to spatial ``size``, as torch's.

    Output pixel ``i`` averages input pixels ``floor(i * in / out)`` to
    ``ceil((i + 1) * in / out) - 1``, so it also upsamples (by repetition).

    Args:
      x: images or feature maps ``[batch, H, W, C]``.
      size: the output ``(height, width)``.

    Returns:
      ``[batch, size[0], size[1], C]`` in the dtype of ``x``.

    Example:
      >>> adaptive_avg_pool(jnp.ones((1, 2, 2, 3)), (7, 7)).shape
      (1, 7, 7, 3)
    """
    mh = jnp.asarray(_pool_matrix(x.shape[1], size[0]), x.dtype)
    mw = jnp.asarray(_pool_matrix(x.shape[2], size[1]), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)


class VGG(nn.Module):
    """A VGG network for NHWC images.

    Attributes:
      stage_sizes: number of 3x3 convolutions in each stage (depth knob).
      stage_widths: width of each stage before ``width_multiplier``; as long as
        ``stage_sizes``.
      batch_norm: BatchNorm after every convolution (timm's ``vgg*_bn``).
      head_width: width of the two hidden layers of the head (4096 in the paper).
      width_multiplier: multiplies every width, the head's included (width knob).
      num_classes: size of the classifier output.
      dropout_rate: dropout after each hidden layer of the head; uses the
        "dropout" rng when training.
      dtype: computation dtype; parameters are kept in float32.
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int] = (64, 128, 256, 512, 512)
    batch_norm: bool = False
    head_width: int = 4096
    width_multiplier: float = 1.0
    num_classes: int = 1000
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Returns logits ``[batch, num_classes]`` (float32) for images ``[batch, H, W, C]``."""
        if x.ndim != 4:
            raise ValueError(f"VGG expects NHWC images, got shape {x.shape}.")
        if len(self.stage_sizes) != len(self.stage_widths):
            raise ValueError(
                f"stage_sizes {tuple(self.stage_sizes)} and stage_widths "
                f"{tuple(self.stage_widths)} must have the same length."
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        width = lambda w: max(1, int(round(w * self.width_multiplier)))
        conv = functools.partial(nn.Conv, kernel_init=_conv_init, dtype=self.dtype)
        x = x.astype(self.dtype)
        for i, (num_convs, w) in enumerate(zip(self.stage_sizes, self.stage_widths, strict=True)):
            for j in range(num_convs):
                x = conv(width(w), (3, 3), padding=1, name=f"stage{i + 1}_conv{j + 1}")(x)
                if self.batch_norm:
                    x = nn.BatchNorm(
                        use_running_average=not train,
                        momentum=0.9,
                        dtype=self.dtype,
                        name=f"stage{i + 1}_bn{j + 1}",
                    )(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        # timm's ConvMlp "pre_logits": fc6/fc7 of the paper as 7x7 and 1x1 convolutions.
        if x.shape[1] < 7 or x.shape[2] < 7:
            x = adaptive_avg_pool(x, (max(7, x.shape[1]), max(7, x.shape[2])))
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = nn.relu(conv(width(self.head_width), (7, 7), padding="VALID", name="fc1")(x))
        x = dropout(x)
        x = nn.relu(conv(width(self.head_width), (1, 1), name="fc2")(x))
        x = dropout(jnp.mean(x, axis=(1, 2)))
        x = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(0.01),
            dtype=self.dtype,
            name="head",
        )(x)
        return x.astype(jnp.float32)


# Small enough that init + grad compiles in seconds (tests/models/test_all_models.py).
_TINY = {"stage_sizes": (1, 1, 1, 1, 1), "width_multiplier": 1 / 16}
for _depth in STAGE_SIZES:
    # Keyword partials, so that ``create(name, stage_sizes=...)`` overrides the preset.
    for _bn in (False, True):
        register(f"vgg{_depth}_bn" if _bn else f"vgg{_depth}", tiny=_TINY)(
            functools.partial(VGG, stage_sizes=STAGE_SIZES[_depth], batch_norm=_bn)
        )


@register_converter(r"vgg(11|13|16|19)(_bn)?")
def _from_torch(arrays, name: str) -> dict:
    """timm ``vgg*`` state dict -> variables of ``create(name)``.

    timm numbers the layers of ``features`` in one ``Sequential``: conv, [bn,]
    relu per convolution and a max-pool per stage; the head is
    ``pre_logits.fc{1,2}`` and ``head.fc``.
    """
    cfg = create(name)
    read = StateDictReader(arrays)
    params, stats = {}, {}
    index = 0
    for i, num_convs in enumerate(cfg.stage_sizes):
        for j in range(num_convs):
            key, scope = f"features.{index}", f"stage{i + 1}_conv{j + 1}"
            params[scope] = {"kernel": read.conv(f"{key}.weight"), "bias": read(f"{key}.bias")}
            index += 1
            if cfg.batch_norm:
                key, scope = f"features.{index}", f"stage{i + 1}_bn{j + 1}"
                params[scope] = {"scale": read(f"{key}.weight"), "bias": read(f"{key}.bias")}
                stats[scope] = {
                    "mean": read(f"{key}.running_mean"),
                    "var": read(f"{key}.running_var"),
                }
                index += 1
            index += 1  # ReLU
        index += 1  # max-pool
    for k in (1, 2):
        key = f"pre_logits.fc{k}"
        params[f"fc{k}"] = {"kernel": read.conv(f"{key}.weight"), "bias": read(f"{key}.bias")}
    params["head"] = {"kernel": read.dense("head.fc.weight"), "bias": read("head.fc.bias")}
    read.check_all_used()
    return {"params": params, "batch_stats": stats} if stats else {"params": params}
