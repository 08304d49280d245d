"""Pruning criteria: pure functions ``params[, grads] -> mask``.

A mask is a pytree of bool arrays beside ``params`` (same structure and shapes),
True where a weight is kept. Leaves that are not prunable get an all-True mask.
Every criterion removes an exact number of weights: ``round(sparsity * n)`` of the
``n`` candidate weights (Python's ``round``), and ties in the score are broken by
position (the leaf order of ``jax.tree.flatten``, then row-major inside a leaf:
the earlier weight is pruned first), so a mask is a deterministic function of its
inputs. All criteria are jit-compatible (the counts come from shapes); a sparsity is
a Python number (it sets a count), so evaluate a schedule outside ``jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from archjax.sparsity.rules import check_sparsity


def _count(sparsity: float, n: int) -> int:
    check_sparsity(sparsity)
    return int(round(float(sparsity) * n))


def _keep_all_but_lowest(scores: jax.Array, k: int) -> jax.Array:
    """A flat bool array, False at the ``k`` lowest ``scores`` (earlier index first on ties)."""
    order = jnp.argsort(scores, stable=True)
    return jnp.ones(scores.shape, bool).at[order[:k]].set(False)


def _scores(params, prunable, score_fn, mask):
    """Per-leaf flat float32 scores for prunable leaves; already-pruned weights score -1."""
    leaves, treedef = jax.tree.flatten(params)
    flags = treedef.flatten_up_to(prunable)
    olds = [None] * len(leaves) if mask is None else treedef.flatten_up_to(mask)
    scores = []
    for i, (x, flag, old) in enumerate(zip(leaves, flags, olds, strict=True)):
        if not flag:
            scores.append(None)
            continue
        s = jnp.abs(score_fn(i, x)).astype(jnp.float32).reshape(-1)
        if old is not None:  # iterative pruning: what is gone stays gone, and goes first
            s = jnp.where(jnp.asarray(old).reshape(-1), s, -1.0)
        scores.append(s)
    return leaves, treedef, scores


def _global(params, prunable, sparsity, score_fn, mask):
    leaves, treedef, scores = _scores(params, prunable, score_fn, mask)
    live = [s for s in scores if s is not None]
    if not live:
        raise ValueError("No prunable parameter: the rules select no leaf with ndim >= 2.")
    flat = jnp.concatenate(live)
    keep = _keep_all_but_lowest(flat, _count(sparsity, flat.size))
    out, start = [], 0
    for x, s in zip(leaves, scores, strict=True):
        if s is None:
            out.append(jnp.ones(x.shape, bool))
        else:
            out.append(keep[start : start + s.size].reshape(x.shape))
            start += s.size
    return treedef.unflatten(out)


def _per_leaf(params, prunable, sparsities, score_fn, mask):
    leaves, treedef, scores = _scores(params, prunable, score_fn, mask)
    if not isinstance(sparsities, (int, float)):
        sparsities = treedef.flatten_up_to(sparsities)
    else:
        sparsities = [sparsities] * len(leaves)
    out = []
    for x, s, sp in zip(leaves, scores, sparsities, strict=True):
        if s is None:
            out.append(jnp.ones(x.shape, bool))
        else:
            out.append(_keep_all_but_lowest(s, _count(sp, s.size)).reshape(x.shape))
    return treedef.unflatten(out)


def global_magnitude(params, sparsity: float, *, prunable, mask=None):
    """Removes the ``round(sparsity * n)`` smallest ``|w|`` over all prunable weights.

    Global magnitude pruning as studied by Blalock et al. (2020) and Gale et al. (2019).

    Args:
      params: parameters.
      sparsity: fraction of the prunable weights to remove, in [0, 1).
      prunable: a bool per leaf (:func:`archjax.sparsity.prunable`).
      mask: an earlier mask; its pruned weights are removed first (iterative pruning).

    Returns:
      A mask beside ``params``.

    Example:
      >>> mask = global_magnitude(params, 0.8, prunable=prunable(params))
    """
    return _global(params, prunable, sparsity, lambda i, x: x, mask)


def layer_magnitude(params, sparsities, *, prunable, mask=None):
    """Removes the smallest ``|w|`` of each prunable leaf at its own sparsity.

    Args:
      params: parameters.
      sparsities: one float for every leaf, or a float per leaf
        (:func:`archjax.sparsity.layer_sparsities`, uniform or ERK).
      prunable: a bool per leaf.
      mask: an earlier mask whose pruned weights are removed first.

    Returns:
      A mask beside ``params``.

    Example:
      >>> mask = layer_magnitude(params, 0.5, prunable=prunable(params))
    """
    return _per_leaf(params, prunable, sparsities, lambda i, x: x, mask)


def random_mask(params, sparsities, *, prunable, key: jax.Array):
    """Removes a uniformly random set of exactly ``round(s * n)`` weights per prunable leaf.

    Random pruning at initialization with layer ratios chosen beforehand (Liu et al.,
    "The Unreasonable Effectiveness of Random Pruning", 2022): pass ERK sparsities.

    Args:
      params: parameters (only shapes are read).
      sparsities: a float, or a float per leaf.
      prunable: a bool per leaf.
      key: PRNG key (one uniform draw over all prunable weights, sliced per leaf).

    Returns:
      A mask beside ``params``.

    Example:
      >>> mask = random_mask(params, 0.9, prunable=p, key=jax.random.key(0))
    """
    # One draw for all prunable weights, sliced per leaf: one RNG program to compile
    # instead of one per leaf shape (threefry compiles slowly on CPU).
    leaves, treedef = jax.tree.flatten(params)
    flags = treedef.flatten_up_to(prunable)
    sizes = [int(np.prod(x.shape)) if f else 0 for x, f in zip(leaves, flags, strict=True)]
    draw = jax.random.uniform(key, (sum(sizes),))
    starts = np.cumsum([0, *sizes])
    return _per_leaf(
        params, prunable, sparsities, lambda i, x: draw[starts[i] : starts[i + 1]], None
    )


def snip(params, grads, sparsity: float, *, prunable):
    """SNIP: removes the weights of smallest saliency ``|g * w|``, globally, at init.

    Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity"
    (2019); ``grads`` is the loss gradient on one batch at initialization.

    Args:
      params: parameters at initialization.
      grads: gradients of the loss with respect to ``params``.
      sparsity: fraction of the prunable weights to remove, in [0, 1).
      prunable: a bool per leaf.

    Returns:
      A mask beside ``params``.

    Example:
      >>> mask = snip(params, jax.grad(loss)(params), 0.9, prunable=p)
    """
    gs = jax.tree.leaves(grads)
    return _global(params, prunable, sparsity, lambda i, x: x * gs[i], None)


def n_m(params, *, prunable, n: int = 2, m: int = 4, axis: int = -2):
    """Structured N:M sparsity: the ``n`` largest ``|w|`` of every ``m`` consecutive inputs.

    Along the input dimension of a Flax kernel ``[..., in, out]`` (``axis=-2``), the
    layout that sparse tensor cores accelerate at 2:4 (Mishra et al., "Accelerating
    Sparse Deep Neural Networks", 2021). Ties keep the earlier weight.

    Args:
      params: parameters.
      prunable: a bool per leaf.
      n: weights kept per group.
      m: group size; must divide the size of ``axis`` of every prunable leaf.
      axis: the input axis of the kernels.

    Returns:
      A mask beside ``params`` with exactly ``n`` True in each group of ``m``.

    Example:
      >>> mask = n_m(params, prunable=p)  # 2:4
    """
    if not 0 < n <= m:
        raise ValueError(f"N:M sparsity needs 0 < N <= M, got N={n}, M={m}.")

    def leaf(path, x, flag):
        if not flag:
            return jnp.ones(x.shape, bool)
        if x.shape[axis] % m:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            raise ValueError(
                f"N:M sparsity: M={m} does not divide the input dim {x.shape[axis]} of "
                f"{name} (shape {tuple(x.shape)})."
            )
        w = jnp.moveaxis(jnp.abs(x.astype(jnp.float32)), axis, -1)
        groups = w.reshape(*w.shape[:-1], w.shape[-1] // m, m)
        rank = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1)
        keep = (rank < n).reshape(w.shape)
        return jnp.moveaxis(keep, -1, axis)

    return jax.tree_util.tree_map_with_path(leaf, params, prunable)


def apply_mask(params, mask):
    """``params`` with the pruned weights set to exactly zero (same dtypes)."""
    return jax.tree.map(lambda p, k: jnp.where(k, p, jnp.zeros_like(p)), params, mask)


def sparsity_of(mask, *, prunable=None) -> float:
    """Fraction of False in ``mask`` (over prunable leaves only, if given)."""
    leaves = jax.tree.leaves(mask)
    if prunable is not None:
        leaves = [k for k, f in zip(leaves, jax.tree.leaves(prunable), strict=True) if f]
    total = sum(int(np.size(k)) for k in leaves)
    kept = sum(int(np.sum(np.asarray(k))) for k in leaves)
    return 1.0 - kept / total if total else 0.0
