"""Per-device train steps: ``shard_map`` and the ``pmap`` compatibility variant.

The main path (:func:`archjax.train.jit_train_step`) is one global ``jax.jit``
program. Some code is naturally written per device: the step sees its local
batch, averages gradients with ``pmean`` and computes cross-replica BatchNorm
statistics. Both variants here run the *same* step, :func:`make_train_step` with
its ``axis_name`` set: right after each backward pass the loss, metrics,
BatchNorm statistics and gradients are averaged over the mapped axis, and every
BatchNorm averages its statistics over it
(:func:`archjax.parallel.cross_replica_batch_norm`), so SAM, gradient
accumulation, the optimizer and the metrics see what the global step sees
(tested equal to one device for each recipe).

Where per-device code differs from the jit step by construction: dropout and
augmentation draw the same key on every device (different masks, same
distribution); mixup/CutMix pair examples within each device's batch; SAM's
``sam_groups`` split each device's batch (group ``g`` is the ``g``-th slice of
every device's batch). Micro-batches are the same examples as in the jit step
(micro-batch ``i`` takes every ``k``-th example; see
:mod:`archjax.train.accumulate`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from archjax.parallel import batch_axes
from archjax.train import accumulate
from archjax.train.step import AxisName, Recipe, TrainStep, make_train_step


def cross_replica_optimizer(
    tx: optax.GradientTransformation, axis_name: AxisName
) -> optax.GradientTransformation:
    """Deprecated: ``make_train_step(..., axis_name=...)`` averages the gradients itself.

    ``tx`` applied to gradients averaged over ``axis_name``; its state is ``tx``'s own.
    """
    warnings.warn(
        "cross_replica_optimizer is deprecated; make_train_step(model, tx, axis_name=...) "
        "averages the gradients over the axis.",
        DeprecationWarning,
        stacklevel=2,
    )

    def update(updates, state, params=None):
        return tx.update(jax.lax.pmean(updates, axis_name), state, params)

    return optax.GradientTransformation(tx.init, update)


def make_per_device_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    axis_name: AxisName,
    recipe: Recipe | None = None,
) -> TrainStep:
    """The per-device body: local batch in, identical new state on every device out.

    Args:
      model: a Flax classifier (BatchNorm layers become cross-replica).
      tx: the optimizer (it sees gradients averaged over ``axis_name``).
      axis_name: the mapped axis (or axes) of the surrounding ``pmap``/``shard_map``.
      recipe: the step's pieces, as in :func:`archjax.train.make_train_step`
        (default: none).

    Returns:
      ``step(state, local_batch) -> (state, metrics)``; metrics are averaged
      over ``axis_name``.
    """
    return make_train_step(model, tx, recipe=recipe or Recipe(), axis_name=axis_name)


def shard_map_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    recipe: Recipe | None = None,
) -> TrainStep:
    """The train step as ``jax.shard_map`` over the batch axes of ``mesh``, jitted, donated.

    The state must be replicated (data parallelism); the batch is split over the
    ``data`` (and ``fsdp``) axes, as :func:`archjax.parallel.shard_batch` places it.

    Example:
      >>> step = shard_map_train_step(model, tx, mesh=make_mesh(), recipe=Recipe(sam_rho=0.05))
      >>> state, metrics = step(state, shard_batch(batch, mesh))
    """
    axes = batch_axes(mesh)
    body = make_per_device_train_step(model, tx, axis_name=axes, recipe=recipe)
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
    recipe: Recipe | None = None,
    devices: Sequence[Any] | None = None,
    axis_name: str = "batch",
) -> TrainStep:
    """The ``jax.pmap`` compatibility variant of the train step (state donated).

    Inputs carry a leading device axis: the state from :func:`replicate`, the
    batch from :func:`split_batch`. Single-process only (``pmap`` across hosts
    needs every process to feed its own devices, which the jit path does better).

    Example:
      >>> step = pmap_train_step(model, tx, recipe=Recipe(microbatches=2))
      >>> state, metrics = step(replicate(state), split_batch(batch, jax.device_count()))
      >>> state = unreplicate(state)
    """
    body = make_per_device_train_step(model, tx, axis_name=axis_name, recipe=recipe)
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
