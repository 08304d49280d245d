"""Per-device train steps: ``shard_map`` and the ``pmap`` compatibility variant.

The main path (:func:`archjax.train.jit_train_step`) is one global ``jax.jit``
program. Some code is naturally written per device: the step sees its local
batch, averages gradients with ``pmean`` and computes cross-replica BatchNorm
statistics. Both variants here run the *same* step as :func:`make_train_step`
(so they stay equal to it; tested) with two changes made from outside:

- the optimizer first averages gradients over the mapped axis
  (:func:`cross_replica_optimizer`, same state tree as the optimizer itself);
- every BatchNorm averages its statistics over the mapped axis
  (:func:`archjax.parallel.cross_replica_batch_norm`).

Differences from the jit step: the ``grad_norm`` metric is the mean of the
per-device norms (not the norm of the mean gradient), and dropout draws the
same key on every device (different masks from the jit step, same distribution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from archjax.parallel import batch_axes, cross_replica_batch_norm
from archjax.train import accumulate
from archjax.train.state import TrainState
from archjax.train.step import Batch, Metrics, make_train_step

AxisName = str | tuple[str, ...]
Step = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


def cross_replica_optimizer(
    tx: optax.GradientTransformation, axis_name: AxisName
) -> optax.GradientTransformation:
    """``tx`` applied to gradients averaged over ``axis_name``; its state is ``tx``'s own.

    Args:
      tx: any optax optimizer.
      axis_name: the ``pmap`` axis or ``shard_map`` mesh axes to average over.

    Returns:
      A transformation with ``tx.init``, so states and checkpoints are shared
      with the jit path.

    Example:
      >>> step = make_train_step(model, cross_replica_optimizer(tx, "batch"))
    """

    def update(updates, state, params=None):
        return tx.update(jax.lax.pmean(updates, axis_name), state, params)

    return optax.GradientTransformation(tx.init, update)


def make_per_device_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    axis_name: AxisName,
    label_smoothing: float = 0.0,
) -> Step:
    """The per-device body: local batch in, identical new state on every device out.

    Args:
      model: a Flax classifier (BatchNorm layers become cross-replica).
      tx: the optimizer (gradients are averaged over ``axis_name`` first).
      axis_name: the mapped axis (or axes) of the surrounding ``pmap``/``shard_map``.
      label_smoothing: as in :func:`make_train_step`.

    Returns:
      ``step(state, local_batch) -> (state, metrics)``; metrics are averaged
      over ``axis_name``.
    """
    inner = make_train_step(
        model, cross_replica_optimizer(tx, axis_name), label_smoothing=label_smoothing
    )

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        with cross_replica_batch_norm(axis_name):
            new_state, metrics = inner(state, batch)
        return new_state, jax.lax.pmean(metrics, axis_name)

    return step


def shard_map_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    label_smoothing: float = 0.0,
) -> Step:
    """The train step as ``jax.shard_map`` over the batch axes of ``mesh``, jitted, donated.

    The state must be replicated (data parallelism); the batch is split over the
    ``data`` (and ``fsdp``) axes, as :func:`archjax.parallel.shard_batch` places it.

    Example:
      >>> step = shard_map_train_step(model, tx, mesh=make_mesh())
      >>> state, metrics = step(state, shard_batch(batch, mesh))
    """
    axes = batch_axes(mesh)
    body = make_per_device_train_step(model, tx, axis_name=axes, label_smoothing=label_smoothing)
    mapped = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axes)),
        out_specs=(PartitionSpec(), PartitionSpec()),
        # With varying-axis checks on, the gradient of the replicated parameters
        # would already be psum-ed by the transpose; off, the body is plain
        # per-device code (local gradients, explicit pmean), exactly as under pmap.
        check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=0)


def pmap_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    devices: Sequence[Any] | None = None,
    axis_name: str = "batch",
) -> Step:
    """The ``jax.pmap`` compatibility variant of the train step (state donated).

    Inputs carry a leading device axis: the state from :func:`replicate`, the
    batch from :func:`split_batch`. Single-process only (``pmap`` across hosts
    needs every process to feed its own devices, which the jit path does better).

    Example:
      >>> step = pmap_train_step(model, tx)
      >>> state, metrics = step(replicate(state), split_batch(batch, jax.device_count()))
      >>> state = unreplicate(state)
    """
    body = make_per_device_train_step(
        model, tx, axis_name=axis_name, label_smoothing=label_smoothing
    )
    return jax.pmap(body, axis_name=axis_name, devices=devices, donate_argnums=0)


def replicate(tree: Any, devices: Sequence[Any] | None = None) -> Any:
    """Stacks ``tree`` once per device (host arrays) as :func:`pmap_train_step` takes it."""
    n = len(devices) if devices is not None else jax.local_device_count()
    # Host arrays with a leading axis of n: pmap places slice i on device i.
    return jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), jax.device_get(tree))


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated tree (drops the device axis)."""
    return jax.tree.map(lambda x: x[0], tree)


def split_batch(batch: Any, num_devices: int) -> Any:
    """Reshapes ``[B, ...]`` leaves to host arrays ``[num_devices, B // num_devices, ...]``.

    Raises:
      ValueError: ``B`` is not divisible by ``num_devices``.
    """
    host = jax.tree.map(np.asarray, batch)
    return accumulate.split_batch(host, num_devices, parts="per-device batches (pmap)")
