"""Parameter and FLOP accounting for any archjax (or Flax Linen) image model.

Parameters are counted from ``jax.eval_shape`` of ``init`` (nothing is
allocated or computed). FLOPs come from XLA's cost analysis of the compiled
eval-mode forward pass, so they describe the program that actually runs.

Convention: XLA counts a multiply-add as **2 FLOPs** (one multiply, one add) and
also counts elementwise work (BatchNorm, activations, pooling, residual adds);
it skips the multiply-adds on zero padding of convolutions. Papers usually
quote multiply-adds ("ResNet-50: 4.1 GFLOPs" = 4.1e9 multiply-adds); for
conv/dense dominated models ``macs = flops / 2`` matches them to a few percent
(ResNet-50 at 224 px: 8.0e9 XLA FLOPs = 4.0e9 MACs).

These are *executed* multiply-adds. :func:`archjax.quant.report` counts *shape*
MACs instead: every output element of a convolution or matrix product costs
``kh * kw * cin / groups`` (zero-padding taps included), nothing else counted.
For a 3x3 "SAME" convolution at stride 1 on H x W, XLA counts ``(3H - 2)(3W - 2)``
taps per channel pair, the shape count ``9 H W`` (16% more at 8 x 8), so small
images with many 3x3 convolutions differ most: ResNet-20 at 32 px gives 3.79e7 here
and 4.08e7 in ``quant.report``. With "VALID" padding the two agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archjax.models.registry import create


def _abstract_variables(model: nn.Module, x: jax.ShapeDtypeStruct) -> Any:
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def count_params(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of trainable parameters (the ``params`` collection) of ``model``.

    Uses ``jax.eval_shape``, so no memory is allocated and no FLOPs are spent.
    BatchNorm running statistics (``batch_stats``) are not counted, as in
    ``sum(p.numel() for p in torch_model.parameters())``.

    Args:
      model: a Flax module called as ``model(x, train=False)``.
      input_shape: shape of an input batch, e.g. ``(1, 224, 224, 3)`` (NHWC).

    Returns:
      The parameter count.

    Example:
      >>> count_params(create("resnet50"), (1, 224, 224, 3))
      25557032
    """
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    variables = _abstract_variables(model, x)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables.get("params", {})))


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """FLOPs of one eval-mode forward pass over a batch of ``input_shape``.

    XLA cost analysis of ``jax.jit(lambda v, x: model.apply(v, x, train=False))``
    compiled for abstract inputs (compiles once, runs nothing). A multiply-add
    counts as 2 FLOPs; see the module docstring for what else is counted.

    Args:
      model: a Flax module called as ``model(x, train=False)``.
      input_shape: shape of the input batch; the result is for the whole batch.

    Returns:
      FLOPs as XLA counts them (divide by 2 for multiply-adds).

    Example:
      >>> count_flops(create("resnet50"), (1, 224, 224, 3)) / 2e9  # GMACs
      3.99...
    """
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    variables = _abstract_variables(model, x)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    cost = forward.lower(variables, x).compile().cost_analysis()
    # Older jax versions return one dict per computation; 0.10 returns a dict.
    costs = cost if isinstance(cost, list | tuple) else [cost]
    return float(sum(c.get("flops", 0.0) for c in costs if c))


def model_stats(
    name_or_model: str | nn.Module,
    *,
    image_size: int,
    channels: int = 3,
    batch: int = 1,
    **create_kwargs: Any,
) -> dict[str, float]:
    """Parameters, FLOPs and multiply-adds of a model at a given resolution.

    Args:
      name_or_model: a registered name (built with ``create(name, **create_kwargs)``)
        or a module.
      image_size: input height = width.
      channels: input channels.
      batch: batch size; ``flops`` and ``macs`` are for the whole batch.
      **create_kwargs: knobs for :func:`archjax.models.create`, e.g. ``num_classes``.

    Returns:
      ``{"params": int, "flops": float, "macs": float}`` with ``macs = flops / 2``:
      XLA's *executed* count (zero padding skipped, elementwise work included; see
      the module docstring), not the shape count of :func:`archjax.quant.report`.

    Raises:
      ValueError: ``create_kwargs`` given together with a module, or an unknown
        name/knob.

    Example:
      >>> model_stats("regnetx_016", image_size=224)["macs"] / 1e9
      1.6...
    """
    if isinstance(name_or_model, str):
        model = create(name_or_model, **create_kwargs)
    elif create_kwargs:
        raise ValueError(f"create_kwargs {sorted(create_kwargs)} need a model name, not a module.")
    else:
        model = name_or_model
    shape = (batch, image_size, image_size, channels)
    flops = count_flops(model, shape)
    return {"params": count_params(model, shape), "flops": flops, "macs": flops / 2}
