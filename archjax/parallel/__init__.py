"""Meshes and shardings (the ``jax.jit`` + ``NamedSharding`` path)."""

from archjax.parallel.mesh import (
    DATA_AXIS,
    check_batch_size,
    data_sharding,
    make_mesh,
    replicated,
    shard_batch,
)

__all__ = [
    "DATA_AXIS",
    "check_batch_size",
    "data_sharding",
    "make_mesh",
    "replicated",
    "shard_batch",
]
