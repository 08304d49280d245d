"""Mixup and CutMix on a batch, with the matching soft targets.

Zhang et al., "mixup: Beyond Empirical Risk Minimization" (2018): with
``lam ~ Beta(alpha, alpha)`` the batch becomes ``lam * x + (1 - lam) * x[perm]``
and the targets ``lam * y + (1 - lam) * y[perm]``. Yun et al., "CutMix" (2019):
a box of area ``(1 - lam)`` from ``x[perm]`` is pasted into ``x`` and the targets
mix by the *pasted area*. Here ``perm`` is the reversed batch (as timm does),
one ``lam`` per batch. Label smoothing is applied to the one-hot targets before
mixing, as in timm's ``mixup_target``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def one_hot_targets(labels: jax.Array, num_classes: int, *, label_smoothing: float = 0.0):
    """``[B, num_classes]`` float32 targets, smoothed (Szegedy et al. 2016) if asked."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets


def mixup(rng: jax.Array, images: jax.Array, targets: jax.Array, *, alpha: float):
    """Mixup of a batch with its reverse.

    Args:
      rng: PRNG key.
      images: ``[B, H, W, C]``.
      targets: ``[B, num_classes]`` (one-hot or smoothed).
      alpha: Beta parameter (0.2 is common for ImageNet).

    Returns:
      ``(images, targets, lam)``.

    Example:
      >>> x, y, lam = mixup(key, images, one_hot_targets(labels, 10), alpha=0.2)
    """
    lam = jax.random.beta(rng, alpha, alpha).astype(jnp.float32)
    x = lam * images + (1.0 - lam) * images[::-1]
    y = lam * targets + (1.0 - lam) * targets[::-1]
    return x.astype(images.dtype), y, lam


def cutmix(rng: jax.Array, images: jax.Array, targets: jax.Array, *, alpha: float):
    """CutMix of a batch with its reverse: one box per batch, targets by pasted area.

    The box has side ``sqrt(1 - lam)`` of the image's, a uniformly drawn centre, and
    is clipped at the border; the target weight is the exact fraction of pixels kept.

    Returns:
      ``(images, targets, lam)`` where ``lam`` is the kept fraction.

    Example:
      >>> x, y, lam = cutmix(key, images, one_hot_targets(labels, 10), alpha=1.0)
    """
    k_lam, k_y, k_x = jax.random.split(rng, 3)
    h, w = images.shape[1], images.shape[2]
    lam = jax.random.beta(k_lam, alpha, alpha)
    cut = jnp.sqrt(1.0 - lam)
    cy = jax.random.uniform(k_y) * h
    cx = jax.random.uniform(k_x) * w
    y0, y1 = jnp.clip(cy - cut * h / 2, 0, h), jnp.clip(cy + cut * h / 2, 0, h)
    x0, x1 = jnp.clip(cx - cut * w / 2, 0, w), jnp.clip(cx + cut * w / 2, 0, w)
    y0, y1, x0, x1 = (jnp.round(v).astype(jnp.int32) for v in (y0, y1, x0, x1))
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    x = jnp.where(box[None, :, :, None], images[::-1], images)
    kept = 1.0 - jnp.mean(box.astype(jnp.float32))
    y = kept * targets + (1.0 - kept) * targets[::-1]
    return x, y, kept


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
):
    """Mixup, CutMix, or (both alphas > 0) one of them with probability 1/2 per batch.

    Returns:
      ``(images, targets)``; unchanged if both alphas are 0.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"Mixing alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}.")
    k_choice, k_mix = jax.random.split(rng)
    if mixup_alpha and cutmix_alpha:
        a = mixup(k_mix, images, targets, alpha=mixup_alpha)[:2]
        b = cutmix(k_mix, images, targets, alpha=cutmix_alpha)[:2]
        use_cutmix = jax.random.bernoulli(k_choice)
        return jax.tree.map(lambda u, v: jnp.where(use_cutmix, v, u), a, b)
    if mixup_alpha:
        return mixup(k_mix, images, targets, alpha=mixup_alpha)[:2]
    if cutmix_alpha:
        return cutmix(k_mix, images, targets, alpha=cutmix_alpha)[:2]
    return images, targets
