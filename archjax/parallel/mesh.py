"""Device meshes and the shardings of the data-parallel train step.

archjax shards with ``jax.jit`` + ``NamedSharding`` on a ``Mesh`` (the "pjit"
path). The foundation uses one mesh axis, ``data``: the batch is split along it
and the train state is replicated. Because the step is one global program, a
BatchNorm mean over the batch axis is already the cross-device mean; no
``pmean`` is written by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, *, devices: Sequence[Any] | None = None) -> Mesh:
    """Returns a 1-D data-parallel mesh.

    Args:
      num_devices: use the first ``num_devices`` devices (default: all of them,
        across every process).
      devices: explicit device list; overrides ``num_devices``.

    Returns:
      A ``Mesh`` with the single axis ``"data"``.

    Example:
      >>> mesh = make_mesh()           # every device
      >>> mesh1 = make_mesh(1)         # a one-device mesh for comparison
    """
    if devices is None:
        all_devices = jax.devices()
        if num_devices is not None and not 1 <= num_devices <= len(all_devices):
            raise ValueError(
                f"num_devices={num_devices} but {len(all_devices)} device(s) are available."
            )
        devices = all_devices[: num_devices or len(all_devices)]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array copied on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: leading axis split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises ``ValueError`` unless ``batch_size`` splits evenly over the data axis."""
    n = mesh.shape[DATA_AXIS]
    if batch_size <= 0 or batch_size % n:
        lower = max(n, batch_size // n * n)
        raise ValueError(
            f"Batch size {batch_size} is not divisible by the number of devices on the "
            f"'{DATA_AXIS}' mesh axis ({n}). Use a multiple of {n}, e.g. {lower} or {lower + n}."
        )


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns this process's batch (numpy pytree) into global arrays sharded on ``data``.

    Each process passes only its own slice of the global batch, as produced by
    :func:`archjax.data.train_iterator`; the result is one global ``jax.Array`` per
    leaf whose leading dimension is the global batch.
    """
    sharding = data_sharding(mesh)
    leaves = jax.tree.leaves(batch)
    if leaves:
        check_batch_size(leaves[0].shape[0] * jax.process_count(), mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
