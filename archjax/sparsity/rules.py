"""Which parameters are prunable, and how much of each: path-regex rules and layer ratios.

A rule is a regular expression searched (:mod:`archjax.tree_paths`, as quantization
and sharding rules are) in each leaf's "/"-joined path inside the ``params``
collection (``"stage1/block0/conv1/kernel"``); the first matching rule says whether
the leaf is pruned. Only leaves with at least two dimensions (conv and dense kernels,
embedding tables) can be pruned: masking a bias or a norm scale is never intended.

Layer-wise ratios are chosen before training: "uniform" gives every prunable leaf the
same sparsity; "erk" (Erdős–Rényi-Kernel, Evci et al., "Rigging the Lottery", 2020)
makes the density of a leaf proportional to ``sum(shape) / prod(shape)``, so small
layers stay denser, at the same total number of kept weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from archjax.tree_paths import check_pattern, first_match, match_path

DISTRIBUTIONS = ("uniform", "erk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneRule:
    """Whether the leaves whose path matches ``pattern`` are pruned.

    Example:
      >>> PruneRule(pattern=r"^head/", prune=False)
    """

    # Regular expression searched (not fully matched) in the "/"-joined leaf path.
    pattern: str
    # True: the leaf is pruned (if it has ndim >= 2); False: it stays dense.
    prune: bool = True

    def __post_init__(self):
        check_pattern(self.pattern, field="PruneRule.pattern")


def first_last_rules(
    *,
    prune_first: bool = False,
    prune_last: bool = False,
    first: str = r"^(stem|patch_embed)[^/]*/",
    last: str = r"^head/",
) -> list[PruneRule]:
    """Prune every kernel, keeping the first and last layer dense (the usual policy).

    Pruning papers (Gale et al., 2019; Frankle et al., 2020) leave the first
    convolution and the classifier dense, as quantization keeps them at 8 bits; the
    regexes are those of :func:`archjax.quant.first_last_rules` applied to leaf paths.

    Args:
      prune_first: prune the stem / patch embedding too.
      prune_last: prune the classifier (``head``) too.
      first: regex of the first layer's leaf paths (VGG's is ``"^stage1_conv1/"``).
      last: regex of the last layer's leaf paths.

    Returns:
      Three rules: first, last, then every leaf named ``kernel``.

    Example:
      >>> mask = prunable(params, first_last_rules())
    """
    return [
        PruneRule(pattern=first, prune=prune_first),
        PruneRule(pattern=last, prune=prune_last),
        PruneRule(pattern=r"(^|/)kernel$", prune=True),
    ]


def _path(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def prunable(params, rules: Sequence[PruneRule] | None = None):
    """A pytree of Python bools beside ``params``: True where the leaf is pruned.

    Works on concrete or abstract (``jax.eval_shape``) parameters.

    Args:
      params: the ``params`` collection (no ``"params/"`` prefix in the paths).
      rules: rules in priority order; None is :func:`first_last_rules` (whose first-layer
        regex matches no VGG layer: VGG's first conv is then pruned). A given rule that
        matches no leaf is an error (a typo would otherwise prune nothing silently).

    Returns:
      Same structure as ``params``, a bool per leaf.

    Example:
      >>> prunable({"head": {"kernel": w}, "conv": {"kernel": v}})
      {'conv': {'kernel': True}, 'head': {'kernel': False}}
    """
    if rules is None:  # the default names no model, so a family may lack a stem or head
        rules = first_last_rules()
    else:
        rules = list(rules)
        paths = [_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for rule in rules:
            if not any(match_path(rule.pattern, p) for p in paths):
                raise ValueError(f"PruneRule pattern {rule.pattern!r} matches no parameter.")

    def leaf(path, x) -> bool:
        rule = first_match(rules, _path(path), pattern=lambda r: r.pattern)
        return rule is not None and rule.prune and np.ndim(x) >= 2

    return jax.tree_util.tree_map_with_path(leaf, params)


def check_sparsity(sparsity: float, *, field: str = "sparsity") -> None:
    """Raises a one-line ``ValueError`` unless ``0 <= sparsity < 1``."""
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{field}={sparsity!r} is outside [0, 1).")


def layer_sparsities(params, sparsity: float, *, prunable, distribution: str = "uniform"):
    """Per-leaf sparsities whose kept-weight total is that of ``sparsity`` over prunables.

    Args:
      params: parameters (concrete or abstract: only shapes are read).
      sparsity: the overall fraction of prunable weights to remove, in [0, 1).
      prunable: a bool per leaf (:func:`prunable`).
      distribution: "uniform" or "erk" (Evci et al., 2020; dense layers that ERK
        would give density > 1 are kept dense and the rest rescaled, as in RigL).

    Returns:
      A float per leaf (0.0 for leaves that are not prunable).

    Example:
      >>> layer_sparsities(params, 0.9, prunable=prunable(params), distribution="erk")
    """
    check_sparsity(sparsity)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}.")
    leaves, treedef = jax.tree.flatten(params)
    flags = treedef.flatten_up_to(prunable)
    sizes = [int(np.prod(x.shape)) for x in leaves]
    out = [0.0] * len(leaves)
    idx = [i for i, f in enumerate(flags) if f]
    if distribution == "uniform":
        for i in idx:
            out[i] = float(sparsity)
        return treedef.unflatten(out)
    # ERK: density_i = eps * raw_i, with eps chosen so that sum density_i * n_i equals
    # (1 - s) * sum n_i; leaves at density 1 are fixed dense and eps is recomputed.
    raw = {i: sum(leaves[i].shape) / sizes[i] for i in idx}
    dense: set[int] = set()
    budget = (1.0 - sparsity) * sum(sizes[i] for i in idx)
    while True:
        free = [i for i in idx if i not in dense]
        left = budget - sum(sizes[i] for i in dense)
        eps = left / sum(raw[i] * sizes[i] for i in free) if free else 0.0
        over = [i for i in free if eps * raw[i] > 1.0]
        if not over:
            break
        dense.update(over)
    for i in idx:
        out[i] = 0.0 if i in dense else float(1.0 - eps * raw[i])
    return treedef.unflatten(out)
