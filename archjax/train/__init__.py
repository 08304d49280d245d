"""Train state, the one pure train step (with its recipe pieces), eval step, losses, compilation."""

from archjax.train.accumulate import accumulate_gradients
from archjax.train.losses import accuracy, correct, cross_entropy
from archjax.train.mixing import cutmix, mix_batch, mixup, one_hot_targets
from archjax.train.per_device import (
    cross_replica_optimizer,
    make_per_device_train_step,
    pmap_train_step,
    replicate,
    shard_map_train_step,
    split_batch,
    unreplicate,
)
from archjax.train.precision import Policy, get_policy, list_policies
from archjax.train.recipe import make_recipe_train_step
from archjax.train.sam import sam_gradients
from archjax.train.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    state_sharding,
)
from archjax.train.step import (
    Recipe,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_train_step,
)

__all__ = [
    "Policy",
    "Recipe",
    "TrainState",
    "abstract_train_state",
    "accumulate_gradients",
    "accuracy",
    "correct",
    "create_train_state",
    "cross_replica_optimizer",
    "cross_entropy",
    "cutmix",
    "get_policy",
    "jit_eval_step",
    "jit_train_step",
    "list_policies",
    "make_recipe_train_step",
    "make_eval_step",
    "make_per_device_train_step",
    "make_train_step",
    "mix_batch",
    "mixup",
    "one_hot_targets",
    "pmap_train_step",
    "replicate",
    "sam_gradients",
    "shard_map_train_step",
    "split_batch",
    "state_sharding",
    "unreplicate",
]
