"""Plots of study results (matplotlib, PNG files), one function per kind of figure."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no display, no global backend change

from archjax.studies.fits import PowerLawFit, edf


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _axes():
    fig = Figure(figsize=(5.5, 4))
    return fig, fig.subplots()


def scaling_law(
    compute: Sequence[float],
    loss: Sequence[float],
    fit: PowerLawFit | None,
    path: str,
    *,
    xlabel: str = "training compute (FLOPs)",
    ylabel: str = "loss",
    title: str = "",
    frontier: Sequence[bool] | None = None,
) -> str:
    """Loss vs compute (log-log) with the fitted curve and its bootstrap band.

    ``frontier`` (a mask) marks the points the fit used, e.g. the compute-optimal ones.
    """
    c, l_ = np.asarray(compute, float), np.asarray(loss, float)
    fig, ax = _axes()
    on = np.ones(c.size, bool) if frontier is None else np.asarray(frontier, bool)
    ax.scatter(c[~on], l_[~on], s=14, color="0.6", label="trials")
    ax.scatter(c[on], l_[on], s=18, color="C0", label="fitted points")
    if fit is not None:
        grid = np.geomspace(c.min(), c.max(), 200)
        lo, hi = fit.band(grid)
        ax.fill_between(grid, lo, hi, color="C1", alpha=0.25, label=f"{fit.confidence:.0%} band")
        b_lo, b_hi = fit.intervals["b"]
        ax.plot(grid, fit.predict(grid), color="C1",
                label=f"$L = aC^{{-b}} + c$, b = {fit.b:.3f} [{b_lo:.3f}, {b_hi:.3f}]")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto(
    x: Sequence[float],
    y: Sequence[float],
    mask: Sequence[bool],
    path: str,
    *,
    xlabel: str,
    ylabel: str,
    labels: Sequence[str] | None = None,
    logx: bool = True,
    title: str = "",
) -> str:
    """Two metrics of every trial with the Pareto frontier (``mask``) drawn as a step line."""
    x, y, m = np.asarray(x, float), np.asarray(y, float), np.asarray(mask, bool)
    fig, ax = _axes()
    ax.scatter(x[~m], y[~m], s=14, color="0.6", label="dominated")
    order = np.argsort(x[m])
    ax.step(x[m][order], y[m][order], where="post", color="C3", marker="o", label="Pareto frontier")
    if labels is not None:
        for xi, yi, text in zip(x[m], y[m], np.asarray(labels)[m], strict=True):
            ax.annotate(str(text), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log" if logx else "linear", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def best_per_group(
    table: Sequence[Mapping[str, Any]],
    path: str,
    *,
    xlabel: str,
    ylabel: str,
    slope: Mapping[str, Any] | None = None,
    title: str = "",
) -> str:
    """Best value per group (from :func:`fits.best_per_group`) with the seeds' range.

    ``slope`` (from :func:`fits.loglog_slope`) adds the fitted line and its interval.
    """
    g = np.array([r["group"] for r in table], float)
    best = np.array([r["best"] for r in table], float)
    lo = np.array([r["best_lo"] for r in table], float)
    hi = np.array([r["best_hi"] for r in table], float)
    fig, ax = _axes()
    ax.errorbar(g, best, yerr=[best - lo, hi - best], fmt="o", capsize=3, label="best (seed range)")
    if slope is not None:
        grid = np.geomspace(g.min(), g.max(), 50)
        s_lo, s_hi = slope["interval"]
        ax.plot(grid, np.exp(slope["intercept"]) * grid ** slope["slope"], color="C1",
                label=f"slope {slope['slope']:.2f} [{s_lo:.2f}, {s_hi:.2f}]")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def edfs(
    samples: Mapping[str, Sequence[float]], path: str, *, xlabel: str = "error", title: str = ""
) -> str:
    """Empirical distribution functions of several populations (e.g. design spaces)."""
    fig, ax = _axes()
    for name, values in samples.items():
        x, f = edf(values)
        ax.step(x, f, where="post", label=f"{name} (n={len(x)})")
    ax.set(xlabel=xlabel, ylabel="cumulative fraction of models", ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def curves(
    series: Mapping[Any, tuple[Sequence[float], Sequence[float]]],
    path: str,
    *,
    ylabel: str = "metric",
    labels: Mapping[Any, str] | None = None,
    logy: bool = False,
    title: str = "",
) -> str:
    """A metric vs step, one line per trial (e.g. :func:`archjax.studies.curves`)."""
    fig, ax = _axes()
    for k, (steps, values) in series.items():
        ax.plot(steps, values, label=(labels or {}).get(k, f"trial {k}"), lw=1)
    ax.set(xlabel="step", ylabel=ylabel, yscale="log" if logy else "linear", title=title)
    if len(series) <= 12:
        ax.legend(fontsize=7)
    return _save(fig, path)
