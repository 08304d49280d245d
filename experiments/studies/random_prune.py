r"""Random pruning at initialization across widths (Liu et al., "The Unreasonable
Effectiveness of Random Pruning: Return of the Most Naive Baseline for Sparse Training").

  python -m archjax.studies run experiments/studies/random_prune.py [--quick]
  python -m archjax.studies fit experiments/studies/random_prune.py [--quick]
  python -m archjax.studies plot experiments/studies/random_prune.py [--quick]

Each trial is one main-job run: a ResNet-8 of some width, dense or with a random
mask drawn at step 0 with ERK layer ratios (``--config.sparsity.method=random
--config.sparsity.distribution=erk``) and trained sparse from scratch. Claim: as
the network grows wider, the randomly pruned network's accuracy approaches the dense
one's, even at high sparsity.
"""

from __future__ import annotations

import numpy as np

from archjax import studies
from experiments.studies import common, sparse_common

STEPS, QUICK_STEPS = 100, 6


def _series(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    key = "model_kwargs.width_multiplier"
    widths = sorted({r[key] for r in done})
    series = {}
    for target in sorted({r["sparsity.target"] for r in done}):
        label = "dense" if target == 0 else f"random ERK, {target:.0%} sparse"
        series[label] = [
            (w, *sparse_common.mean_sd([r["test_accuracy"] for r in done
                                        if r[key] == w and r["sparsity.target"] == target]))
            for w in widths
        ]  # fmt: skip
    return series


def fit(rows):
    series = _series(rows)
    dense = {w: m for w, m, _ in series.pop("dense")}
    out = {}
    for label, points in series.items():
        gaps = [(w, dense[w] - m, sd) for w, m, sd in points]
        for w, gap, sd in gaps:
            out[f"dense - {label} @ width {w}"] = [round(gap, 4), round(sd, 4)]
        # Does the gap shrink with width? Slope of the gap against log2(width).
        w, g = np.log2([x[0] for x in gaps]), np.array([x[1] for x in gaps])
        out[f"{label}: gap slope per width doubling"] = (
            round(float(np.polyfit(w, g, 1)[0]), 4) if len(w) > 1 else None
        )
    return out


def plot(rows, curves, outdir):
    return [
        sparse_common.lines(
            _series(rows),
            f"{outdir}/random_prune.png",
            xlabel="width multiplier (ResNet-8)",
            ylabel="test accuracy",
            title="Random pruning at init (ERK) vs dense, 8x8 digits",
            logx=True,
        )
    ]


def define(quick: bool = False) -> studies.Study:
    steps = QUICK_STEPS if quick else STEPS
    widths, targets, seeds = (
        ([0.25], [0.0, 0.9], [0]) if quick else ([0.25, 0.5, 1.0, 2.0], [0.0, 0.5, 0.9], [0, 1, 2])
    )
    configs = [
        {"model_kwargs.width_multiplier": w, "sparsity.method": "random" if t else "none",
         "sparsity.target": t, "seed": s}
        for w in widths for t in targets for s in seeds
    ]  # fmt: skip
    return studies.Study(
        name="random_prune" + ("_quick" if quick else ""),
        configs=configs,
        trial=common.train_trial,
        check=common.check_train_config,
        setup=common.setup,
        fixed={**sparse_common.base(steps), "sparsity.distribution": "erk"},
        objective="test_loss",
        fit=fit,
        plot=plot,
    )
