"""Shared by the sparsity studies (lottery, global_mp, random_prune): the base run and plots.

The base run is the main job at a size a 2-core machine trains in seconds: a
ResNet-8 at half width on 8x8 digits. Every run of a study uses the same shapes, so
the persistent compilation cache serves the train step after the first trial.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def base(num_steps: int, *, width: float = 0.5) -> dict:
    """Main-job overrides of the studies' base run (one evaluation, one checkpoint)."""
    return {
        "model": "resnet8",
        "model_kwargs.width_multiplier": width,
        "image_size": 8,
        "batch_size": 64,
        "num_steps": num_steps,
        "warmup_steps": max(1, num_steps // 20),
        "log_every": num_steps,
        "eval_every": num_steps,
        "checkpoint_every": num_steps,
        "keep_checkpoints": 1,
        "num_devices": 1,
    }


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def lines(series: dict, path: str, *, xlabel: str, ylabel: str, title: str, logx=False) -> str:
    """One line with error bars per label: ``{label: [(x, mean, sd), ...]}``."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for label, points in series.items():
        points = sorted(points)
        x, y, e = (np.array(c, float) for c in zip(*points, strict=True))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
