"""Fits of study results: power laws with bootstrap intervals, slopes, frontiers, EDFs.

The saturating power law ``L = a * C**(-b) + c`` is fitted as in the Chinchilla
paper (Hoffmann et al. 2022, Approach 3) and its replication by Besiroglu et al.
2024: a Huber loss on log residuals, starting points from a grid, ``c`` bounded
below the smallest loss, and bootstrap intervals in which *every* resample is
fitted from the grid again (restarting from the point estimate gives intervals
far too narrow). Given ``c``, ``log(L - c) = log a - b log C`` is a line, so
``a, b`` have a closed form and only ``c`` is searched: a grid over ``c``, then
golden-section refinement, then L-BFGS-B on all three parameters from that
start. All resamples are fitted at once with NumPy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.optimize

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def _check(name: str, values: Any, *, positive: bool = False) -> np.ndarray:
    """A 1-D float array; raises naming the first NaN/inf or non-positive entry."""
    x = np.asarray(values, dtype=float).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"{name} has {x[bad[0]]} at index {bad[0]} (a diverged or missing "
                         "trial?); drop it or filter the rows first.")  # fmt: skip
    if positive and (x <= 0).any():
        i = int(np.flatnonzero(x <= 0)[0])
        raise ValueError(f"{name} must be positive for a log-log fit; got {x[i]} at index {i}.")
    return x


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """``L = a * C**(-b) + c`` with percentile bootstrap intervals.

    Attributes:
      a, b, c: point estimates.
      intervals: ``{"a": (lo, hi), "b": ..., "c": ...}`` at ``confidence``.
      samples: bootstrap estimates, shape ``(resamples, 3)`` as ``(a, b, c)``.
      confidence: e.g. 0.95.
    """

    a: float
    b: float
    c: float
    intervals: dict[str, tuple[float, float]]
    samples: np.ndarray
    confidence: float

    def predict(self, compute: Any) -> np.ndarray:
        return self.a * np.asarray(compute, float) ** (-self.b) + self.c

    def band(self, compute: Any) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap band of the curve at ``compute`` (same confidence)."""
        c = np.asarray(compute, float)
        s = self.samples
        curves = s[:, :1] * c[None, :] ** (-s[:, 1:2]) + s[:, 2:3]
        q = (1 - self.confidence) / 2
        return np.quantile(curves, q, axis=0), np.quantile(curves, 1 - q, axis=0)

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "c": self.c, "confidence": self.confidence,
                "intervals": {k: list(v) for k, v in self.intervals.items()}}  # fmt: skip


def _profile(logc: np.ndarray, logl: np.ndarray, cs: np.ndarray, delta: float):
    """Huber loss, log a, b for each candidate ``c``: batched over leading axes.

    logc, logl: (..., n); cs: (..., k). Returns arrays of shape (..., k).
    """
    x = logc[..., None, :]
    y = np.log(np.exp(logl)[..., None, :] - cs[..., None])  # log(L - c)
    xm, ym = x.mean(-1, keepdims=True), y.mean(-1, keepdims=True)
    sxx = ((x - xm) ** 2).sum(-1)
    slope = ((x - xm) * (y - ym)).sum(-1) / np.maximum(sxx, 1e-300)
    loga = ym[..., 0] - slope * xm[..., 0]
    b = -slope
    pred = np.log(np.exp(loga[..., None] - b[..., None] * x) + cs[..., None])
    loss = _huber(logl[..., None, :] - pred, delta).sum(-1)
    return loss, loga, b


def _fit_batch(logc, logl, delta: float, grid_size: int, refine_steps: int):
    """Profile fit of every row of (B, n) data: (B, 3) as (log a, b, c)."""
    lmin = np.exp(logl).min(-1, keepdims=True)
    # c in [0, min L): dense near min L, where the curve bends.
    fractions = 1.0 - np.geomspace(1e-4, 1.0, grid_size)
    cs = lmin * fractions[None, :]
    loss, _, _ = _profile(logc, logl, cs, delta)
    i = np.clip(np.argmin(loss, -1), 1, grid_size - 2)
    rows = np.arange(len(cs))
    lo, hi = cs[rows, i + 1], cs[rows, i - 1]  # fractions decrease along the grid
    lo = np.where(np.argmin(loss, -1) == grid_size - 1, 0.0, lo)
    for _ in range(refine_steps):  # golden section on the bracket, all rows at once
        m1 = hi - _GOLDEN * (hi - lo)
        m2 = lo + _GOLDEN * (hi - lo)
        l1 = _profile(logc, logl, m1[:, None], delta)[0][:, 0]
        l2 = _profile(logc, logl, m2[:, None], delta)[0][:, 0]
        lo, hi = np.where(l1 < l2, lo, m1), np.where(l1 < l2, m2, hi)
    c = (lo + hi) / 2
    _, loga, b = _profile(logc, logl, c[:, None], delta)
    return np.stack([loga[:, 0], b[:, 0], c], -1)


def _polish(logc, logl, start, delta: float) -> np.ndarray:
    """L-BFGS-B on (log a, b, c) of the Huber objective, c in [0, min L)."""
    lmin = float(np.exp(logl).min())

    def objective(p):
        loga, b, c = p
        pred = np.logaddexp(loga - b * logc, np.log(max(c, 1e-300)))
        return _huber(logl - pred, delta).sum()

    bounds = [(None, None), (None, None), (0.0, lmin * (1 - 1e-9))]
    res = scipy.optimize.minimize(objective, start, method="L-BFGS-B", bounds=bounds)
    return res.x if res.fun <= objective(start) else np.asarray(start)


def fit_power_law(
    compute: Sequence[float],
    loss: Sequence[float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    huber_delta: float = 1e-3,
    grid_size: int = 64,
    seed: int = 0,
) -> PowerLawFit:
    """Fits ``loss = a * compute**(-b) + c`` with bootstrap intervals (pairs resampling).

    Args:
      compute: positive compute (FLOPs) per point.
      loss: positive losses, one per point.
      resamples: bootstrap resamples; each is fitted from the grid again.
      confidence: coverage of the intervals, e.g. 0.95.
      huber_delta: Huber threshold on log residuals (1e-3 as in Chinchilla).
      grid_size: candidate values of ``c``.
      seed: seed of the resampling.

    Returns:
      A :class:`PowerLawFit`.

    Raises:
      ValueError: fewer than 4 points (3 parameters), non-positive or non-finite
        compute or loss, or lengths that differ.

    Example:
      >>> fit = fit_power_law(flops, losses)
      >>> fit.b, fit.intervals["b"]
    """
    c_arr = _check("compute", compute, positive=True)
    l_arr = _check("loss", loss, positive=True)
    if c_arr.size != l_arr.size:
        raise ValueError(f"compute has {c_arr.size} points but loss has {l_arr.size}.")
    if c_arr.size < 4:
        raise ValueError(f"A power law fit needs more points than its 3 parameters (a, b, c); "
                         f"got {c_arr.size}.")  # fmt: skip
    if np.unique(c_arr).size < 3:
        raise ValueError("A power law fit needs at least 3 distinct compute values.")
    logc, logl = np.log(c_arr), np.log(l_arr)
    point = _polish(logc, logl, _fit_batch(logc[None], logl[None], huber_delta, grid_size, 25)[0],
                    huber_delta)  # fmt: skip
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, c_arr.size, size=(resamples, c_arr.size))
    # A resample needs 3 distinct compute values to pin down a curve; redraw the others.
    for _ in range(100):
        bad = np.array([np.unique(c_arr[r]).size < 3 for r in idx])
        if not bad.any():
            break
        idx[bad] = rng.integers(0, c_arr.size, size=(int(bad.sum()), c_arr.size))
    boot = _fit_batch(logc[idx], logl[idx], huber_delta, grid_size, 25)
    samples = np.stack([np.exp(boot[:, 0]), boot[:, 1], boot[:, 2]], -1)
    q = (1 - confidence) / 2
    lo, hi = np.quantile(samples, q, axis=0), np.quantile(samples, 1 - q, axis=0)
    names = ("a", "b", "c")
    return PowerLawFit(
        a=float(np.exp(point[0])),
        b=float(point[1]),
        c=float(point[2]),
        intervals={n: (float(lo[i]), float(hi[i])) for i, n in enumerate(names)},
        samples=samples,
        confidence=confidence,
    )


def loglog_slope(
    x: Sequence[float], y: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Least-squares slope of ``log y`` on ``log x`` with a pairs-bootstrap interval.

    Returns:
      ``{"slope", "intercept", "interval": (lo, hi), "confidence"}`` with
      ``y ~ exp(intercept) * x**slope``.

    Raises:
      ValueError: fewer than 3 points, fewer than 2 distinct x, non-positive or NaN values.
    """
    lx = np.log(_check("x", x, positive=True))
    ly = np.log(_check("y", y, positive=True))
    if lx.size != ly.size:
        raise ValueError(f"x has {lx.size} points but y has {ly.size}.")
    if lx.size < 3 or np.unique(lx).size < 2:
        raise ValueError(f"A slope with an interval needs at least 3 points at 2 or more x; "
                         f"got {lx.size} points at {np.unique(lx).size} x.")  # fmt: skip

    def ols(xs, ys):
        xm, ym = xs.mean(-1, keepdims=True), ys.mean(-1, keepdims=True)
        sxx = ((xs - xm) ** 2).sum(-1)
        slope = ((xs - xm) * (ys - ym)).sum(-1) / np.where(sxx > 0, sxx, np.nan)
        return slope, ym[..., 0] - slope * xm[..., 0]

    slope, intercept = ols(lx, ly)
    idx = np.random.default_rng(seed).integers(0, lx.size, size=(resamples, lx.size))
    boot, _ = ols(lx[idx], ly[idx])
    boot = boot[np.isfinite(boot)]  # resamples with a single x have no slope
    q = (1 - confidence) / 2
    return {"slope": float(slope), "intercept": float(intercept), "confidence": confidence,
            "interval": (float(np.quantile(boot, q)), float(np.quantile(boot, 1 - q)))}  # fmt: skip


def pareto_front(points: Any, directions: Sequence[str]) -> np.ndarray:
    """Mask of the points no other point dominates (n dimensions).

    Args:
      points: shape ``(n_points, n_axes)``.
      directions: per axis ``"minimize"`` or ``"maximize"``.

    Returns:
      Boolean mask of shape ``(n_points,)``; equal points are all kept.

    Example:
      >>> pareto_front([[1, 0.9], [2, 0.95], [3, 0.9]], ["minimize", "maximize"])
      array([ True,  True, False])
    """
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(directions):
        raise ValueError(f"points must have shape (n, {len(directions)}) for "
                         f"{len(directions)} directions; got {p.shape}.")  # fmt: skip
    for d in directions:
        if d not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', got {d!r}.")
    _check("points", p)
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    q = p * sign  # now every axis is minimized
    no_worse = (q[:, None, :] <= q[None, :, :]).all(-1)  # [j, i]: j no worse than i
    better = (q[:, None, :] < q[None, :, :]).any(-1)
    dominated = (no_worse & better).any(0)
    return ~dominated


def best_per_group(
    table: Sequence[Mapping[str, Any]],
    *,
    group: str,
    by: str,
    metric: str,
    mode: str = "min",
    seed: str | None = "seed",
) -> list[dict[str, Any]]:
    """Per value of ``group``, the ``by`` value whose mean ``metric`` over seeds is best.

    E.g. the best learning rate (``by``) per batch size (``group``). The spread is
    over seeds: each seed's own best ``by`` value (``best_lo``/``best_hi``: their
    min and max) and the std of the metric at the chosen value.

    Returns:
      One dict per group (sorted): ``group, best, best_lo, best_hi, metric_mean,
      metric_std, seeds``.

    Raises:
      ValueError: an empty table, a missing column, a NaN metric or a bad mode.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
    if not table:
        raise ValueError("best_per_group needs at least one row.")
    for col in (group, by, metric) + ((seed,) if seed else ()):
        missing = [i for i, r in enumerate(table) if col not in r]
        if missing:
            raise ValueError(f"Column {col!r} is missing from row {missing[0]}.")
    _check(metric, [r[metric] for r in table])
    pick = np.argmin if mode == "min" else np.argmax
    out = []
    for g in sorted({r[group] for r in table}):
        rows = [r for r in table if r[group] == g]
        xs = sorted({r[by] for r in rows})
        means = [np.mean([r[metric] for r in rows if r[by] == x]) for x in xs]
        best = xs[int(pick(means))]
        at_best = [r[metric] for r in rows if r[by] == best]
        seeds = sorted({r[seed] for r in rows}) if seed else [None]
        per_seed = []
        for s in seeds:
            mine = [r for r in rows if seed is None or r[seed] == s]
            per_seed.append(mine[int(pick([r[metric] for r in mine]))][by])
        out.append({"group": g, "best": best, "best_lo": min(per_seed), "best_hi": max(per_seed),
                    "metric_mean": float(np.mean(at_best)), "metric_std": float(np.std(at_best)),
                    "seeds": len(seeds)})  # fmt: skip
    return out


def edf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Empirical distribution function: sorted values and the fraction at or below each.

    RegNet (Radosavovic et al. 2020) compares design spaces by the EDF of their
    models' errors: a curve further up-left is the better space.

    Raises:
      ValueError: no values, or a NaN.
    """
    x = np.sort(_check("values", values))
    if x.size == 0:
        raise ValueError("edf needs at least one value.")
    return x, np.arange(1, x.size + 1) / x.size
