"""Cross-replica BatchNorm for per-device code (``shard_map``, ``pmap``).

Inside ``jax.jit`` a BatchNorm over the global batch is already cross-device.
Per-device code (``shard_map``, ``pmap``) sees only its local batch, and Flax's
``nn.BatchNorm`` averages over devices only when its ``axis_name`` is set
(Ioffe & Szegedy 2015 compute statistics over the whole mini-batch; the
cross-replica form is that of Goyal et al., "Accurate, Large Minibatch SGD",
2017 with the whole batch as one group). Rather than give every model an axis
knob, :func:`cross_replica_batch_norm` intercepts BatchNorm calls (as qwix
intercepts matmuls), so any registered model works unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import flax.linen as nn

AxisName = str | tuple[str, ...]


@contextlib.contextmanager
def cross_replica_batch_norm(axis_name: AxisName) -> Iterator[None]:
    """Within this context, every ``nn.BatchNorm`` without an ``axis_name`` uses ``axis_name``.

    The module is called with its ``axis_name`` field set for the duration of the
    call only (Flax modules are frozen dataclasses; the field is restored after),
    so the statistics become ``pmean``s over the mapped axis. Use it around the
    *tracing* of per-device code, e.g. inside the function given to ``shard_map``.

    Args:
      axis_name: a ``shard_map`` mesh axis (or tuple of axes) or a ``pmap`` axis name.

    Example:
      >>> def per_device(variables, x):
      ...     with cross_replica_batch_norm("data"):
      ...         return model.apply(variables, x, train=True, mutable=["batch_stats"])
    """

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name != "__call__"
            or not isinstance(module, nn.BatchNorm)
            or module.axis_name is not None
        ):
            return next_fun(*args, **kwargs)
        object.__setattr__(module, "axis_name", axis_name)
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(module, "axis_name", None)

    with nn.intercept_methods(interceptor):
        yield
