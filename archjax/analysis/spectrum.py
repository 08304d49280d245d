"""Hessian eigenvalues: power iteration, Lanczos and stochastic Lanczos quadrature.

All three only need Hessian-vector products (:mod:`archjax.analysis.hessian`,
whose compiled product they share), and take the same ``subset`` / ``stacked``
arguments (a block of the Hessian; mini-batch vs full-data). Each iteration is
a compiled HVP plus a compiled update; the loop runs in Python (see the
hessian module for why). Vectors are the selected leaves raveled into one flat
array, so memory is ``num_steps x num_params`` for Lanczos.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from archjax.analysis.hessian import Batch, LossFn, Params, Selector, _Operator


class _FlatOperator:
    """The HVP on flat vectors of the selected leaves."""

    def __init__(self, loss_fn, params, data, subset, stacked):
        self.op = _Operator(loss_fn, params, data, subset, stacked)
        self.n, self.dtype, self.unravel = self.op.n, self.op.dtype, self.op.unravel

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.op.flat(x)


def _orthogonalize(basis: jax.Array, w: jax.Array) -> jax.Array:
    """Removes the span of ``basis`` rows from ``w`` (Gram-Schmidt twice: "twice is enough")."""
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


@jax.jit
def _lanczos_update(basis, j, v, hv, key):
    """Stores ``v`` as row ``j``; returns the basis, alpha, beta and the next vector.

    Full reorthogonalization against every stored row. On breakdown (an invariant
    subspace was found) the next vector is a fresh random vector orthogonal to the
    basis and beta is zero, so the Ritz values stay exact.
    """
    dtype = basis.dtype
    tiny = jnp.finfo(dtype).tiny
    basis = basis.at[j].set(v)
    alpha = jnp.vdot(v, hv)
    w = _orthogonalize(basis, hv)
    beta = jnp.linalg.norm(w)
    fresh = _orthogonalize(basis, jax.random.rademacher(key, v.shape, dtype=dtype))
    fresh = fresh / jnp.maximum(jnp.linalg.norm(fresh), tiny)
    broke = beta <= 1e-5 * jnp.maximum(jnp.linalg.norm(hv), tiny)
    v_next = jnp.where(broke, fresh, w / jnp.where(broke, 1.0, beta))
    return basis, alpha, jnp.where(broke, 0.0, beta), v_next


def _lanczos(matvec: _FlatOperator, num_steps: int, key: jax.Array) -> np.ndarray:
    """``num_steps`` Lanczos steps with full reorthogonalization; the tridiagonal ``T``."""
    n, dtype = matvec.n, matvec.dtype
    key, sub = jax.random.split(key)
    v = jax.random.rademacher(sub, (n,), dtype=dtype) / np.sqrt(n)
    basis = jnp.zeros((num_steps, n), dtype)
    alphas, betas = [], []
    for j, k in enumerate(jax.random.split(key, num_steps)):
        hv = matvec(v)
        if j == 0:  # place the basis like the HVPs, so that every step hits one program
            basis, v = jax.device_put((basis, v), hv.sharding)
        basis, alpha, beta, v = _lanczos_update(basis, j, v, hv, k)
        alphas.append(alpha)
        betas.append(beta)
    return _tridiagonal(np.asarray(alphas, np.float64), np.asarray(betas, np.float64))


def _tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    off = betas[:-1]
    return np.diag(alphas) + np.diag(off, 1) + np.diag(off, -1)


@jax.jit
def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(v.dtype).tiny)


def _check_steps(num_steps: int, n: int) -> int:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    return min(num_steps, n)


def power_iteration(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: jax.Array,
    num_iters: int = 20,
    subset: Selector = None,
    stacked: bool = False,
) -> tuple[jax.Array, Params]:
    """The Hessian eigenvalue of largest magnitude and its eigenvector, by power iteration.

    HAWQ (Dong et al. 2019) ranks layers by this eigenvalue; the learning-rate
    stability bound is ``2 / lambda_max``. For several eigenvalues, or faster
    convergence, use :func:`top_eigenvalues` (Lanczos).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the point where the Hessian is taken.
      data: one batch, or stacked batches if ``stacked``.
      key: PRNG key of the starting vector.
      num_iters: number of HVPs.
      subset: restrict to a block of the Hessian (see :mod:`archjax.analysis.hessian`).
      stacked: full-data Hessian over the leading batch axis of ``data``.

    Returns:
      ``(eigenvalue, eigenvector)``: the Rayleigh quotient of the last iterate and
      the unit eigenvector shaped like ``params`` (zero outside ``subset``).

    Example:
      >>> lam, vec = power_iteration(loss_fn, params, batch, key=jax.random.key(0))
    """
    matvec = _FlatOperator(loss_fn, params, data, subset, stacked)
    v = _normalize(jax.random.normal(key, (matvec.n,), matvec.dtype))
    for _ in range(num_iters):
        v = _normalize(matvec(v))
    lam = jnp.vdot(v, matvec(v))
    return lam, matvec.op.split.full(matvec.unravel(v))


def lanczos_tridiagonal(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: jax.Array,
    num_steps: int,
    subset: Selector = None,
    stacked: bool = False,
) -> np.ndarray:
    """The ``num_steps x num_steps`` Lanczos tridiagonal matrix of the Hessian.

    Lanczos (1950) with full reorthogonalization (every new vector is orthogonalized
    against all previous ones, twice), so no spurious copies of converged
    eigenvalues appear. Its eigenvalues (Ritz values) approximate the extremal
    Hessian eigenvalues; with ``num_steps`` equal to the number of parameters they
    are all the eigenvalues.

    Args:
      loss_fn, params, data, subset, stacked: as in :func:`power_iteration`.
      key: PRNG key of the Rademacher starting vector.
      num_steps: number of Lanczos steps (HVPs); capped at the number of parameters.

    Returns:
      The symmetric tridiagonal matrix ``T`` (float64 numpy).
    """
    matvec = _FlatOperator(loss_fn, params, data, subset, stacked)
    return _lanczos(matvec, _check_steps(num_steps, matvec.n), key)


def top_eigenvalues(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: jax.Array,
    k: int = 1,
    num_steps: int = 30,
    subset: Selector = None,
    stacked: bool = False,
) -> np.ndarray:
    """The ``k`` algebraically largest Hessian eigenvalues, by Lanczos.

    Used for the top eigenvalue of HAWQ and of the learning-rate / batch-size
    theory (Granziol et al., "Learning Rates as a Function of Batch Size", 2022).

    Args:
      loss_fn, params, data, subset, stacked: as in :func:`power_iteration`.
      key: PRNG key of the starting vector.
      k: number of eigenvalues (<= ``num_steps``).
      num_steps: Lanczos steps; more steps, more accurate; a few times ``k`` is usual.

    Returns:
      ``[k]`` eigenvalues in decreasing order.

    Example:
      >>> top_eigenvalues(loss_fn, params, batch, key=jax.random.key(0), k=3)
    """
    if not 1 <= k <= num_steps:
        raise ValueError(f"k must be in [1, num_steps={num_steps}], got {k}.")
    t = lanczos_tridiagonal(
        loss_fn, params, data, key=key, num_steps=num_steps, subset=subset, stacked=stacked
    )
    ritz = np.linalg.eigvalsh(np.asarray(t, np.float64))[::-1]
    if k > ritz.size:
        raise ValueError(f"k={k} exceeds the number of selected parameters ({ritz.size}).")
    return ritz[:k]


@dataclasses.dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature nodes and weights of the Hessian spectrum.

    Attributes:
      nodes: ``[num_runs, num_steps]`` Ritz values of each run.
      weights: ``[num_runs, num_steps]`` squared first components of the Ritz
        vectors; each row sums to 1.
      num_params: dimension ``n`` of the (restricted) Hessian.
    """

    nodes: np.ndarray
    weights: np.ndarray
    num_params: int

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """The density on ``grid``: quadrature nodes smoothed by Gaussians of width ``sigma``.

        Integrates to 1 (up to the mass outside ``grid``).
        """
        grid = np.asarray(grid, np.float64)[:, None, None]
        kernel = np.exp(-0.5 * ((grid - self.nodes) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        return (kernel * self.weights).sum(axis=-1).mean(axis=-1)

    def moment(self, fn=lambda x: x) -> float:
        """``tr(fn(H)) / n`` estimated by the quadrature (``fn = identity``: trace / n)."""
        return float((self.weights * fn(self.nodes)).sum(axis=-1).mean())


def spectral_density(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: jax.Array,
    num_steps: int = 30,
    num_runs: int = 4,
    subset: Selector = None,
    stacked: bool = False,
) -> SpectralDensity:
    """The Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

    Lin, Saad and Yang (2016), "Approximating spectral densities of large
    matrices"; applied to networks by Ghorbani, Krishnan and Xiao (2019), "An
    Investigation into Neural Net Optimization via Hessian Eigenvalue Density".
    Each run starts Lanczos from a random unit vector ``v`` and gives a quadrature
    ``v^T f(H) v ~ sum_i w_i f(theta_i)``; runs are averaged.

    Args:
      loss_fn, params, data, subset, stacked: as in :func:`power_iteration`.
      key: PRNG key of the starting vectors.
      num_steps: Lanczos steps per run (quadrature nodes).
      num_runs: independent starting vectors.

    Returns:
      A :class:`SpectralDensity`; ``.density(grid, sigma)`` evaluates it.

    Example:
      >>> sd = spectral_density(loss_fn, params, batch, key=jax.random.key(0))
      >>> plt.semilogy(grid, sd.density(grid, sigma=0.01))
    """
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}.")
    matvec = _FlatOperator(loss_fn, params, data, subset, stacked)
    num_steps = _check_steps(num_steps, matvec.n)
    nodes, weights = [], []
    for k in jax.random.split(key, num_runs):
        evals, evecs = np.linalg.eigh(_lanczos(matvec, num_steps, k))
        nodes.append(evals)
        weights.append(evecs[0] ** 2)
    return SpectralDensity(np.stack(nodes), np.stack(weights), matvec.n)
