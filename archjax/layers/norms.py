"""Normalization layers behind one factory, :func:`norm_layer`.

Every layer acts on channels-last activations (NHWC images or ``[..., C]``
features) and keeps its parameters in float32; ``dtype`` is the compute dtype.
Parameters are named ``scale``/``bias`` (plus ``v`` for EvoNorm-S0) and running
statistics ``mean``/``var`` in the ``batch_stats`` collection, as Flax's own
``nn.BatchNorm`` names them, so weight converters written for Flax BatchNorm
keep working.

Kinds:
  - ``"batch"``: ``flax.linen.BatchNorm`` with momentum 0.9 and epsilon 1e-5
    (Ioffe & Szegedy 2015). Cross-replica statistics through ``axis_name`` under
    ``shard_map``/``pmap``; under ``jax.jit`` with sharded inputs they are
    global already.
  - ``"layer"``: LayerNorm over the channel axis only (as in Transformers and
    ConvNeXt; Ba et al. 2016). For statistics over H, W and C use
    ``"group"`` with ``num_groups=1``.
  - ``"rms"``: RMSNorm over the channel axis (Zhang & Sennrich 2019).
  - ``"group"``: GroupNorm (Wu & He 2018) with ``num_groups`` (default 32)
    groups. When the channel count is not divisible by ``num_groups``, the
    largest divisor of the channel count that is ``<= num_groups`` is used
    (e.g. 24 channels -> 24 groups, 40 channels -> 20 groups).
  - ``"batch_channel"``: Batch-Channel Normalization (Qiao et al. 2020,
    "Micro-Batch Training with Batch-Channel Normalization and Weight
    Standardization"): a BatchNorm (submodule ``batch``, with running
    statistics) followed by a GroupNorm over channels (submodule ``channel``),
    as in the authors' reference implementation.
  - ``"evonorm_s0"``: EvoNorm-S0 (Liu et al. 2020, "Evolving Normalization-
    Activation Layers"): ``x * sigmoid(v * x) / group_std(x) * scale + bias``,
    batch independent; it includes the activation, so do not add one after.
  - ``"none"``: identity, no variables.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_KINDS = ("batch", "layer", "rms", "group", "batch_channel", "evonorm_s0", "none")

# LayerNorm epsilon of timm's ViT, MLP-Mixer and ConvNeXt (torch's default is 1e-5).
LN_EPS = 1e-6


def _num_groups(channels: int, max_groups: int) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _group_moments(x: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """Per-example, per-group mean and biased variance, broadcast back to ``x``'s shape."""
    b, c = x.shape[0], x.shape[-1]
    xg = x.reshape(b, -1, groups, c // groups).astype(jnp.float32)
    mean = jnp.mean(xg, axis=(1, 3))
    var = jnp.mean(jnp.square(xg - mean[:, None, :, None]), axis=(1, 3))
    bshape = (b,) + (1,) * (x.ndim - 2) + (c,)
    expand = lambda m: jnp.repeat(m, c // groups, axis=-1).reshape(bshape)
    return expand(mean), expand(var)


class Identity(nn.Module):
    """Returns its input unchanged (the ``"none"`` norm)."""

    @nn.compact
    def __call__(self, x):
        return x


class GroupNorm(nn.Module):
    """GroupNorm (Wu & He 2018) that picks a valid group count from the channels.

    Attributes:
      num_groups: maximum number of groups; the largest divisor of the channel
        count that is ``<= num_groups`` is used.
      epsilon: added to the variance.
      use_scale: learn a per-channel ``scale``.
      use_bias: learn a per-channel ``bias``.
      dtype: compute dtype.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.ndim < 2:
            raise ValueError(f"GroupNorm expects [batch, ..., channels], got shape {x.shape}.")
        c = x.shape[-1]
        mean, var = _group_moments(x, _num_groups(c, self.num_groups))
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            y = y * self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return y.astype(self.dtype)


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020): ``x * sigmoid(v x) / group_std(x) * scale + bias``.

    Matches timm's ``EvoNorm2dS0`` (biased group variance, ``std = sqrt(var + eps)``).

    Attributes:
      num_groups: maximum number of groups for the standard deviation (see
        :class:`GroupNorm` for non-divisible channel counts).
      epsilon: added to the group variance.
      dtype: compute dtype.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        v = self.param("v", nn.initializers.ones, (c,), jnp.float32)
        _, var = _group_moments(x, _num_groups(c, self.num_groups))
        xf = x.astype(jnp.float32)
        y = xf * jax.nn.sigmoid(v * xf) * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale + bias).astype(self.dtype)


class BatchChannelNorm(nn.Module):
    """Batch-Channel Normalization (Qiao et al. 2020): BatchNorm, then GroupNorm.

    The batch step (``batch``) estimates per-channel statistics over the batch
    and keeps running averages (``batch_stats``); the channel step
    (``channel``) normalizes each example over groups of channels, which keeps
    the network away from elimination singularities with micro-batches.

    Attributes:
      train: use batch statistics and update running averages.
      num_groups: maximum number of channel groups.
      momentum: running-average momentum of the batch step.
      epsilon: added to both variances.
      axis_name: mapped axis for cross-replica batch statistics.
      dtype: compute dtype.
    """

    train: bool = False
    num_groups: int = 32
    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(
            use_running_average=not self.train,
            momentum=self.momentum,
            epsilon=self.epsilon,
            axis_name=self.axis_name,
            dtype=self.dtype,
            name="batch",
        )(x)
        return GroupNorm(self.num_groups, self.epsilon, dtype=self.dtype, name="channel")(x)


def norm_layer(
    kind: str,
    *,
    train: bool,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    name: str | None = None,
    num_groups: int = 32,
    epsilon: float = 1e-5,
) -> nn.Module:
    """Builds a normalization layer by name.

    Args:
      kind: one of :data:`NORM_KINDS` (see the module docstring).
      train: batch statistics and running-average updates (``"batch"``,
        ``"batch_channel"``); ignored by the batch-independent kinds.
      dtype: compute dtype; parameters and statistics stay float32.
      axis_name: mapped axis name for cross-replica BatchNorm statistics
        (``shard_map``/``pmap``); ``None`` otherwise.
      name: Flax module name.
      num_groups: maximum group count for ``"group"``, ``"batch_channel"`` and
        ``"evonorm_s0"``.
      epsilon: added to variances (and to the mean square for ``"rms"``).

    Returns:
      A Flax module mapping ``[batch, ..., C]`` to the same shape.

    Raises:
      ValueError: ``kind`` is unknown (the message lists the kinds).

    Example:
      >>> y, upd = norm_layer("batch", train=True).init_with_output(
      ...     jax.random.key(0), x, mutable=["params", "batch_stats"])
    """
    if kind == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=epsilon,
            axis_name=axis_name,
            dtype=dtype,
            name=name,
        )
    if kind == "layer":
        return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name)
    if kind == "rms":
        return nn.RMSNorm(epsilon=epsilon, dtype=dtype, name=name)
    if kind == "group":
        return GroupNorm(num_groups, epsilon, dtype=dtype, name=name)
    if kind == "batch_channel":
        return BatchChannelNorm(
            train=train,
            num_groups=num_groups,
            epsilon=epsilon,
            axis_name=axis_name,
            dtype=dtype,
            name=name,
        )
    if kind == "evonorm_s0":
        return EvoNormS0(num_groups, epsilon, dtype=dtype, name=name)
    if kind == "none":
        return Identity(name=name)
    raise ValueError(f"Unknown norm kind {kind!r}. Allowed kinds: {', '.join(NORM_KINDS)}.")
