"""Train state, pure train/eval steps, losses and their sharded compilation."""

from archjax.train.losses import accuracy, correct, cross_entropy
from archjax.train.per_device import (
    cross_replica_optimizer,
    make_per_device_train_step,
    pmap_train_step,
    replicate,
    shard_map_train_step,
    split_batch,
    unreplicate,
)
from archjax.train.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    state_sharding,
)
from archjax.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step

__all__ = [
    "TrainState",
    "abstract_train_state",
    "accuracy",
    "correct",
    "create_train_state",
    "cross_replica_optimizer",
    "cross_entropy",
    "jit_eval_step",
    "jit_train_step",
    "make_eval_step",
    "make_per_device_train_step",
    "make_train_step",
    "pmap_train_step",
    "replicate",
    "shard_map_train_step",
    "split_batch",
    "state_sharding",
    "unreplicate",
]
