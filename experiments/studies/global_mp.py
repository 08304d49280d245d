r"""Global magnitude pruning vs other criteria ("Is Complexity Required for Neural Network
Pruning? A Case Study on Global Magnitude Pruning", Gupta et al.).

  python -m archjax.studies run experiments/studies/global_mp.py [--quick]
  python -m archjax.studies fit experiments/studies/global_mp.py [--quick]
  python -m archjax.studies plot experiments/studies/global_mp.py [--quick]

Each trial is one main-job run that trains dense for half its steps, prunes to a
target sparsity with one criterion and trains on with the mask
(``--config.sparsity.*``): global magnitude, layer-wise magnitude (the same
sparsity in every layer), SNIP's saliency |g * w| and random (uniform layer ratios),
one-shot at the half-way step; global and layer-wise magnitude also gradually (Zhu &
Gupta's cubic schedule from 1/4 to 3/4 of training). The first conv and the
classifier stay dense for every criterion. Claim: vanilla global MP is as good as or
better than the other criteria.
"""

from __future__ import annotations

from archjax import studies
from experiments.studies import common, sparse_common

# Quick: 4 steps, so the gradual schedule prunes at 3 steps (each target compiles a prune).
STEPS, QUICK_STEPS = 100, 4
ONE_SHOT = ("magnitude", "layer_magnitude", "snip", "random")
GRADUAL = ("magnitude", "layer_magnitude")
LABELS = {"magnitude": "global MP", "layer_magnitude": "layer-wise MP", "snip": "SNIP",
          "random": "random"}  # fmt: skip


def configs(steps: int, targets, seeds, one_shot=ONE_SHOT, gradual=GRADUAL) -> list[dict]:
    """Dense, the one-shot criteria and the gradual ones, at every target and seed."""
    out = [{"sparsity.method": "none", "seed": s} for s in seeds]
    for seed in seeds:
        for target in targets:
            for method in one_shot:
                out.append(
                    {"sparsity.method": method, "sparsity.target": target,
                     "sparsity.begin_step": steps // 2, "seed": seed}
                )  # fmt: skip
            for method in gradual:
                out.append(
                    {"sparsity.method": method, "sparsity.target": target,
                     "sparsity.schedule": "gradual", "sparsity.begin_step": steps // 4,
                     "sparsity.end_step": 3 * steps // 4,
                     "sparsity.frequency": max(1, steps // 16), "seed": seed}
                )  # fmt: skip
    return out


def _series(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    dense = [r["test_accuracy"] for r in done if r["sparsity.method"] == "none"]
    series: dict[str, list] = {}
    pruned = [r for r in done if r["sparsity.method"] != "none"]
    for method, schedule in sorted({(r["sparsity.method"], r.get("sparsity.schedule", "one_shot"))
                                    for r in pruned}):  # fmt: skip
        label = LABELS[method] + (", gradual" if schedule == "gradual" else "")
        mine = [r for r in pruned if r["sparsity.method"] == method
                and r.get("sparsity.schedule", "one_shot") == schedule]  # fmt: skip
        series[label] = [
            (
                t,
                *sparse_common.mean_sd(
                    [r["test_accuracy"] for r in mine if r["sparsity.target"] == t]
                ),
            )  # fmt: skip
            for t in sorted({r["sparsity.target"] for r in mine})
        ]
    return sparse_common.mean_sd(dense), series


def fit(rows):
    dense, series = _series(rows)
    out = {"dense_accuracy": [round(dense[0], 4), round(dense[1], 4)]}
    for label, points in series.items():
        for t, mean, sd in points:
            out[f"{label} @ {t}"] = [round(mean, 4), round(sd, 4)]

    # The compute each mask saves: the kept fraction of the forward MACs (one-shot vs
    # gradual at the same parameter sparsity; the paper's FLOPs-sparsification claim).
    def cell(r):
        return r["sparsity.method"], r.get("sparsity.schedule", "one_shot"), r["sparsity.target"]

    done = [r for r in rows if r["state"] == "COMPLETE" and r.get("macs_kept") is not None]
    for method, schedule, t in sorted({cell(r) for r in done}):
        label = LABELS[method] + (", gradual" if schedule == "gradual" else "")
        kept = [r["macs_kept"] for r in done if cell(r) == (method, schedule, t)]
        out[f"{label} @ {t}: MACs kept"] = round(float(sum(kept) / len(kept)), 4)
    # Per target: the best criterion, and global MP's margin over the best other one-shot one.
    for t in sorted({t for points in series.values() for t, _, _ in points}):
        at = {label: mean for label, points in series.items() for s, mean, _ in points if s == t}
        out[f"best @ {t}"] = max(at, key=at.get)
        others = [v for k, v in at.items() if k in ("layer-wise MP", "SNIP", "random")]
        if "global MP" in at and others:
            out[f"global MP - best other one-shot @ {t}"] = round(at["global MP"] - max(others), 4)
    return out


def plot(rows, curves, outdir):
    dense, series = _series(rows)
    targets = sorted({t for points in series.values() for t, _, _ in points})
    return [
        sparse_common.lines(
            {"dense": [(t, *dense) for t in targets], **series},
            f"{outdir}/global_mp.png",
            xlabel="sparsity (fraction of prunable weights removed)",
            ylabel="test accuracy",
            title="Pruning criteria, ResNet-8 (w 0.5) on 8x8 digits",
        )
    ]


def define(quick: bool = False) -> studies.Study:
    steps = QUICK_STEPS if quick else STEPS
    if quick:  # one gradual and two one-shot criteria: every path of the full study
        grid = configs(steps, [0.8], [0], one_shot=("magnitude", "snip"), gradual=("magnitude",))
    else:
        grid = configs(steps, [0.5, 0.8, 0.9, 0.95], [0, 1, 2])
    return studies.Study(
        name="global_mp" + ("_quick" if quick else ""),
        configs=grid,
        trial=common.train_trial,
        check=common.check_train_config,
        setup=common.setup,
        fixed=sparse_common.base(steps),
        objective="test_loss",
        fit=fit,
        plot=plot,
    )
