"""Device meshes and the shardings of the batch.

archjax shards with ``jax.jit`` + ``NamedSharding`` on a ``Mesh`` (the "pjit"
path). A mesh has up to three named axes:

- ``data``: the batch is split along it; parameters are copied.
- ``fsdp``: the batch is split along it too, and so are parameters and optimizer
  state (fully sharded data parallelism, Rajbhandari et al., "ZeRO", 2020).
- ``model``: tensor parallelism; the batch is copied along it and the weights of
  transformer MLPs and attention are split (Shoeybi et al., "Megatron-LM", 2019).

Which parameter dimension goes on which axis is decided by
:mod:`archjax.parallel.rules`. Because the step is one global program, a
BatchNorm mean over the batch axis is already the cross-device mean; no
``pmean`` is written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, MODEL_AXIS)
# Mesh axes that split the batch, outermost first.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def _devices(num_devices: int | None, devices: Sequence[Any] | None) -> list[Any]:
    if devices is not None:
        return list(devices)
    all_devices = jax.devices()
    if num_devices is not None and not 1 <= num_devices <= len(all_devices):
        raise ValueError(
            f"num_devices={num_devices} but {len(all_devices)} device(s) are available."
        )
    return all_devices[: num_devices or len(all_devices)]


def _axis_sizes(shape: Mapping[str, int], n: int) -> dict[str, int]:
    """Resolves one ``-1`` entry of ``shape`` so that the sizes multiply to ``n``."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"Unknown mesh axis {unknown[0]!r}; allowed axes: {', '.join(MESH_AXES)}.")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(
            f"Mesh shape {dict(shape)}: sizes must be positive, with at most one -1 "
            "(meaning 'all remaining devices')."
        )
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n % fixed:
            raise ValueError(f"Mesh shape {dict(shape)} does not divide {n} devices.")
        sizes[free[0]] = n // fixed
    if math.prod(sizes.values()) != n:
        raise ValueError(
            f"Mesh shape {dict(shape)} has {math.prod(sizes.values())} devices but {n} are used; "
            "set one axis to -1 or change num_devices."
        )
    return sizes


def make_mesh(
    num_devices: int | None = None,
    *,
    devices: Sequence[Any] | None = None,
    shape: Mapping[str, int] | None = None,
) -> Mesh:
    """Returns a device mesh: 1-D ``data`` by default, or ``data x fsdp x model``.

    Args:
      num_devices: use the first ``num_devices`` devices (default: all of them,
        across every process).
      devices: explicit device list; overrides ``num_devices``.
      shape: sizes of the axes ``data``, ``fsdp`` and ``model``, e.g.
        ``{"data": -1, "fsdp": 1, "model": 2}``; one size may be ``-1`` (all
        remaining devices), missing axes have size 1. ``None`` gives the 1-D
        mesh ``("data",)``.

    Returns:
      A ``Mesh``. With ``shape`` it always has the three axes (in that order), so
      that shardings written for one strategy are valid for every other.

    Example:
      >>> mesh = make_mesh()                                   # all devices on data
      >>> fsdp = make_mesh(shape={"data": 2, "fsdp": -1})      # 2 x 4 on 8 devices
      >>> tp = make_mesh(shape={"data": -1, "model": 2})       # 4 x 1 x 2
    """
    devices = _devices(num_devices, devices)
    if shape is None:
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    sizes = _axis_sizes(shape, len(devices))
    grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The axes of ``mesh`` that split the batch (``data`` and ``fsdp`` if present)."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_size_divisor(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the batch axes' sizes."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array copied on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: leading axis split over the batch axes (``data``, ``fsdp``)."""
    axes = batch_axes(mesh)
    return NamedSharding(mesh, PartitionSpec(axes[0] if len(axes) == 1 else axes))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises ``ValueError`` unless ``batch_size`` splits evenly over the batch axes."""
    n = batch_size_divisor(mesh)
    if batch_size <= 0 or batch_size % n:
        lower = max(n, batch_size // n * n)
        names = " x ".join(f"'{a}'" for a in batch_axes(mesh))
        raise ValueError(
            f"Batch size {batch_size} is not divisible by the number of devices on the "
            f"{names} mesh axis ({n}). Use a multiple of {n}, e.g. {lower} or {lower + n}."
        )


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns this process's batch (numpy pytree) into global arrays split on the batch axes.

    Each process passes only its own slice of the global batch, as produced by
    :func:`archjax.data.train_iterator`; the result is one global ``jax.Array`` per
    leaf whose leading dimension is the global batch.
    """
    sharding = data_sharding(mesh)
    leaves = jax.tree.leaves(batch)
    if leaves:
        check_batch_size(leaves[0].shape[0] * jax.process_count(), mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
