"""Sharpness-aware minimization (SAM) as a gradient function, with m-sharpness groups.

Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization" (2021): with ``g = grad L(w)`` the step uses the gradient at the
worst-case point of a ``rho``-ball, ``g_SAM = grad L(w + rho * g / ||g||)``,
which costs a second forward/backward pass. The paper's experiments compute the
perturbation per accelerator ("m-sharpness", m = per-device batch); here the
batch is split into ``num_groups`` equal groups, each with its own perturbation,
and their SAM gradients are averaged. With the batch sharded over ``num_groups``
devices on the ``data`` axis, group ``i`` is device ``i``'s shard, so this is
per-device SAM. Chen et al., "When Vision Transformers Outperform ResNets" (2022)
use it for ViT and Mixer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from archjax.train.accumulate import GradFn, split_batch


def sam_gradients(grad_fn: GradFn, *, rho: float, num_groups: int = 1) -> GradFn:
    """Wraps a gradient function so that it returns the SAM gradient.

    Args:
      grad_fn: ``(params, batch, rng) -> ((loss, aux), grads)``, mean-reduced (see
        :mod:`archjax.train.accumulate`).
      rho: radius of the neighbourhood (0.05 in the paper for CIFAR; 0.05-0.2 for ViT).
      num_groups: m-sharpness groups (1 = one perturbation for the whole batch).

    Returns:
      A gradient function of the same signature whose ``(loss, aux)`` come from the
      first pass (at ``w``, so BatchNorm statistics are those of the unperturbed
      model) and whose gradients are the group mean of ``grad L_i(w + e_i)``.

    Example:
      >>> grad_fn = sam_gradients(jax.value_and_grad(loss_fn, has_aux=True), rho=0.05)
    """
    if rho <= 0:
        raise ValueError(f"SAM rho must be > 0, got {rho}.")
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}.")

    def one_group(params, batch, rng):
        (loss, aux), grads = grad_fn(params, batch, rng)
        scale = rho / jnp.maximum(optax.tree.norm(grads), 1e-12)
        perturbed = jax.tree.map(lambda p, g: p + scale * g.astype(p.dtype), params, grads)
        _, sam_grads = grad_fn(perturbed, batch, rng)
        return (loss, aux), sam_grads

    if num_groups == 1:
        return one_group

    def grouped(params, batch, rng):
        groups = split_batch(batch, num_groups)
        rngs = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_groups))
        out = jax.vmap(one_group, in_axes=(None, 0, 0))(params, groups, rngs)
        return jax.tree.map(lambda x: jnp.mean(x, axis=0), out)

    return grouped
