"""Meshes, sharding rules, multi-process setup (the ``jax.jit`` + ``NamedSharding`` path)."""

from archjax.parallel.cross_replica import cross_replica_batch_norm
from archjax.parallel.distributed import initialize, is_main_process
from archjax.parallel.mesh import (
    BATCH_AXES,
    DATA_AXIS,
    FSDP_AXIS,
    MESH_AXES,
    MODEL_AXIS,
    batch_axes,
    batch_size_divisor,
    check_batch_size,
    data_sharding,
    make_mesh,
    replicated,
    shard_batch,
)
from archjax.parallel.rules import (
    DEFAULT_LOGICAL_TO_MESH,
    DEFAULT_PARAM_RULES,
    ShardingRules,
    logical_axes,
    logical_sharding,
    partition_spec,
    path_name,
    tree_partition_specs,
    tree_shardings,
)

__all__ = [
    "BATCH_AXES",
    "DATA_AXIS",
    "DEFAULT_LOGICAL_TO_MESH",
    "DEFAULT_PARAM_RULES",
    "FSDP_AXIS",
    "MESH_AXES",
    "MODEL_AXIS",
    "ShardingRules",
    "batch_axes",
    "batch_size_divisor",
    "check_batch_size",
    "cross_replica_batch_norm",
    "data_sharding",
    "initialize",
    "is_main_process",
    "logical_axes",
    "logical_sharding",
    "make_mesh",
    "partition_spec",
    "path_name",
    "replicated",
    "shard_batch",
    "tree_partition_specs",
    "tree_shardings",
]
