"""Low-rank factorization of kernels (SVD) and LoRA adapters over any parameter tree.

A Flax kernel ``[..., in, out]`` (dense ``[in, out]``, conv ``[kh, kw, in, out]``) is
the matrix ``W`` of shape ``[prod(...) * in, out]``. ``factorize`` writes it as
``A @ B`` with ``A = U_r sqrt(S_r)`` reshaped to ``[..., in, r]`` (a conv with ``r``
output channels) and ``B = sqrt(S_r) V_r^T`` of shape ``[r, out]`` (a 1x1 conv or dense
layer): Denton et al. (2014), Jaderberg et al. (2014). At full rank the product is
the kernel up to float rounding.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021): a
frozen base plus ``(alpha / r) * A @ B`` for the leaves matched by path regexes, with
``B = 0`` at init so the merged model starts equal to the base. The adapters are a
flat dict keyed by leaf path; train them with ``jax.grad`` of
``loss(merge(params, lora))`` with respect to ``lora`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from archjax.tree_paths import check_pattern, match_path


def _check_kernel(kernel) -> None:
    if np.ndim(kernel) < 2:
        raise ValueError(
            f"Low-rank factorization needs a kernel with ndim >= 2, got shape {np.shape(kernel)}."
        )


def choose_rank(kernel, energy: float) -> int:
    """Smallest rank whose singular values keep ``energy`` of ``sum(S**2)``."""
    _check_kernel(kernel)
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy={energy!r} is outside (0, 1].")
    w = np.asarray(kernel, np.float64).reshape(-1, np.shape(kernel)[-1])
    s2 = np.linalg.svd(w, compute_uv=False) ** 2
    frac = np.cumsum(s2) / max(s2.sum(), np.finfo(np.float64).tiny)
    return int(min(np.searchsorted(frac, energy - 1e-12) + 1, len(s2)))


def factorize(kernel, *, rank: int | None = None, energy: float | None = None):
    """Factors ``(a, b)`` of ``kernel`` at ``rank`` (or at the rank keeping ``energy``).

    Args:
      kernel: ``[..., in, out]``.
      rank: number of singular values kept, 1..min(prod(...) * in, out).
      energy: alternatively, the fraction of ``sum(S**2)`` to keep (0, 1].

    Returns:
      ``a`` of shape ``[..., in, r]`` and ``b`` of shape ``[r, out]``, in the kernel's dtype.

    Example:
      >>> a, b = factorize(kernel, energy=0.9)
      >>> approx = reconstruct(a, b)
    """
    _check_kernel(kernel)
    if (rank is None) == (energy is None):
        raise ValueError("factorize: give exactly one of rank= and energy=.")
    shape = np.shape(kernel)
    w = jnp.asarray(kernel).reshape(-1, shape[-1])
    full = min(w.shape)
    if energy is not None:
        rank = choose_rank(kernel, energy)
    if not 1 <= rank <= full:
        raise ValueError(f"rank={rank} is outside [1, {full}] for a kernel of shape {shape}.")
    u, s, vt = jnp.linalg.svd(w.astype(jnp.float32), full_matrices=False)
    root = jnp.sqrt(s[:rank])
    a = (u[:, :rank] * root).reshape(*shape[:-1], rank)
    b = root[:, None] * vt[:rank]
    return a.astype(w.dtype), b.astype(w.dtype)


def reconstruct(a, b):
    """The kernel ``a @ b`` of shape ``[..., in, out]`` (inverse of :func:`factorize`)."""
    return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])


def _path(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def init_lora(
    params, patterns: Sequence[str], *, key: jax.Array, rank: int = 4, alpha: float | None = None
) -> dict:
    """LoRA adapters for every leaf (ndim >= 2) whose path matches one of ``patterns``.

    Args:
      params: the frozen base parameters.
      patterns: path regexes (``re.search`` on ``"stage1/block0/conv1/kernel"``); each
        must match at least one leaf with ndim >= 2.
      key: PRNG key for the ``a`` factors.
      rank: ``r``.
      alpha: scale numerator; the update is ``(alpha / r) * a @ b`` (default alpha = r).

    Returns:
      ``{path: {"a": [prod(...) * in, r], "b": [r, out], "scale": ()}}``; ``b`` is zero.

    Example:
      >>> lora = init_lora(params, [r"attn/.*kernel$"], key=jax.random.key(0), rank=8)
    """
    if rank < 1:
        raise ValueError(f"LoRA rank={rank} must be >= 1.")
    for p in patterns:
        check_pattern(p, field="init_lora patterns")
    flat = [(_path(p), x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]]
    for p in patterns:
        if not any(match_path(p, name) and np.ndim(x) >= 2 for name, x in flat):
            raise ValueError(f"LoRA pattern {p!r} matches no parameter with ndim >= 2.")
    chosen = [
        (n, x) for n, x in flat if np.ndim(x) >= 2 and any(match_path(p, n) for p in patterns)
    ]
    keys = jax.random.split(key, len(chosen))
    scale = float(rank if alpha is None else alpha) / rank
    out = {}
    for k, (name, x) in zip(keys, chosen, strict=True):
        fan_in = int(np.prod(x.shape[:-1]))
        a = jax.random.normal(k, (fan_in, rank), x.dtype) / np.sqrt(fan_in)
        b = jnp.zeros((rank, x.shape[-1]), x.dtype)
        out[name] = {"a": a, "b": b, "scale": jnp.asarray(scale, x.dtype)}
    return out


def merge(params, lora: dict):
    """``params`` with ``scale * a @ b`` added to every leaf named in ``lora``.

    Example:
      >>> logits = model.apply({"params": merge(params, lora)}, x)
    """
    names = {_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(set(lora) - names)
    if missing:
        raise ValueError(f"LoRA adapters for unknown parameters: {', '.join(missing)}.")

    def leaf(path, x):
        ad = lora.get(_path(path))
        if ad is None:
            return x
        return x + (ad["scale"] * (ad["a"] @ ad["b"])).reshape(x.shape).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)
