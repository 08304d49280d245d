"""Pruning and low-rank compression of any parameter tree, as masks and optax transforms.

Masks are pytrees of bools beside the parameters (True = kept); which leaves are
prunable is chosen by path-regex rules (:mod:`archjax.tree_paths`); criteria are
pure functions ``params[, grads] -> mask``; :func:`keep_masked` keeps pruned weights
at exactly zero through any optax optimizer. Nothing here knows a model.
"""

from archjax.sparsity.cost import SparseCost, sparse_bops, sparse_cost
from archjax.sparsity.criteria import (
    apply_mask,
    global_magnitude,
    layer_magnitude,
    n_m,
    random_mask,
    snip,
    sparsity_of,
)
from archjax.sparsity.lowrank import choose_rank, factorize, init_lora, merge, reconstruct
from archjax.sparsity.masked import MaskedState, get_mask, keep_masked, masked_update, set_mask
from archjax.sparsity.rewind import rewind
from archjax.sparsity.rules import PruneRule, first_last_rules, layer_sparsities, prunable
from archjax.sparsity.schedules import gradual_sparsity, imp_sparsities, one_shot, rounds_for

__all__ = [
    "MaskedState",
    "PruneRule",
    "SparseCost",
    "apply_mask",
    "choose_rank",
    "factorize",
    "first_last_rules",
    "get_mask",
    "global_magnitude",
    "gradual_sparsity",
    "imp_sparsities",
    "init_lora",
    "keep_masked",
    "layer_magnitude",
    "layer_sparsities",
    "masked_update",
    "merge",
    "n_m",
    "one_shot",
    "prunable",
    "random_mask",
    "reconstruct",
    "rewind",
    "rounds_for",
    "set_mask",
    "snip",
    "sparse_bops",
    "sparse_cost",
    "sparsity_of",
]
