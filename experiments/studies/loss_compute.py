r"""Held-out loss vs training compute of an NF-ResNet family (Smith et al. 2023).

  python -m archjax.studies run experiments/studies/loss_compute.py --quick
  python -m archjax.studies fit experiments/studies/loss_compute.py --quick
  python -m archjax.studies plot experiments/studies/loss_compute.py --quick

"ConvNets Match Vision Transformers at Scale": NFNets over depth, width and
epoch budget; held-out loss against training compute follows "a log-log
scaling law", and the compute-optimal model grows with the budget. Here: small
NF-ResNets (``nf_resnet26``'s blocks, with AGC as NFNets train) over width x depth
on the generated ``shapes``, each trained once at a constant learning rate after
warmup; every evaluation along the run is a (compute, loss) point (the envelope
of learning curves, Kaplan et al. 2020, rather than one cosine run per budget).
The compute-optimal frontier is fitted as ``L = a C^-b + c`` with bootstrap
intervals, and the parameters of the frontier's models against compute as a
log-log slope (how the optimal model size grows with compute).
"""

from __future__ import annotations

import os

import numpy as np

from archjax import studies
from archjax.studies import fits, plots
from experiments.plotting import read_metrics
from experiments.studies import common


def train_trial_with_evals(config, trial):
    """The main job (``common.train_trial``) plus the test loss and error at every evaluation.

    Metrics ``test_loss_at_<step>`` and ``test_error_at_<step>``: a fit reads the
    learning curves from the rows alone.
    """
    out = common.train_trial(config, trial)
    for record in read_metrics(os.path.join(trial.workdir, "metrics.jsonl")):
        if record["split"] == "test":
            out[f"test_loss_at_{record['step']}"] = record["loss"]
            out[f"test_error_at_{record['step']}"] = 1.0 - record["accuracy"]
    return out


def eval_steps(row):
    """The steps at which ``train_trial_with_evals`` recorded test metrics, sorted."""
    return sorted(int(k.rsplit("_", 1)[1]) for k in row if k.startswith("test_loss_at_"))


def _points(rows):
    """(compute, loss, params, trial) of every evaluation of every COMPLETE trial."""
    pts = []
    for r in rows:
        if r["state"] != "COMPLETE":
            continue
        flops_per_step = r["train_flops"] / r["steps"]
        pts += [
            (flops_per_step * s, r[f"test_loss_at_{s}"], r["params"], r["trial"])
            for s in eval_steps(r)
        ]
    if len(pts) < 4:
        raise ValueError(f"Need at least 4 evaluations to fit a power law, got {len(pts)}.")
    return np.array(pts, dtype=float)


def analyse(rows):
    """The frontier, its power law and the growth of the frontier's model size."""
    pts = _points(rows)
    front = fits.pareto_front(pts[:, :2], ["minimize", "minimize"])
    # A frontier of fewer than 4 points (a toy run whose loss barely moves) cannot
    # pin down 3 parameters: then every point is fitted, and the summary says so.
    fitted = front if front.sum() >= 4 else np.ones_like(front)
    law = fits.fit_power_law(pts[fitted, 0], pts[fitted, 1], resamples=1000)
    growth = None
    if len(np.unique(pts[front, 0])) >= 3:
        growth = fits.loglog_slope(pts[front, 0], pts[front, 2])
    return pts, front, fitted, law, growth


def fit(rows):
    pts, front, fitted, law, growth = analyse(rows)
    models = []
    for r in rows:
        if r["state"] == "COMPLETE":
            models.append(
                {
                    "stage_sizes": r["model_kwargs.stage_sizes"],
                    "width_multiplier": r["model_kwargs.width_multiplier"],
                    "params": r["params"],
                    "final_test_loss": r["test_loss"],
                    "train_flops": r["train_flops"],
                }
            )
    frontier = [
        {"compute": float(c), "loss": float(loss), "params": int(p)}
        for c, loss, p, _ in pts[front][np.argsort(pts[front, 0])]
    ]
    return {
        "points": int(len(pts)),
        "frontier_points": int(front.sum()),
        "fitted_on": "frontier" if fitted is front else "all points",
        **law.as_dict(),
        "optimal_params_vs_compute": growth,
        "frontier": frontier,
        "models": models,
    }


def plot(rows, curves, outdir):
    pts, front, fitted, law, growth = analyse(rows)
    labels = {
        r["trial"]: f"{r['model_kwargs.stage_sizes']} x{r['model_kwargs.width_multiplier']}"
        for r in rows
        if r["state"] == "COMPLETE"
    }
    return [
        plots.scaling_law(
            pts[:, 0],
            pts[:, 1],
            law,
            f"{outdir}/loss_compute.png",
            frontier=fitted,
            ylabel="held-out loss",
            title="NF-ResNets on shapes: loss vs compute",
        ),
        plots.curves(
            curves,
            f"{outdir}/loss_compute_curves.png",
            ylabel="held-out loss",
            labels=labels,
            logy=True,
        ),
    ]


def define(quick: bool = False) -> studies.Study:
    fixed = {
        "model": "nf_resnet26",
        "dataset": "shapes",
        "image_size": 16,
        "num_devices": 1,
        "batch_size": 64,
        "schedule": "constant",
        "learning_rate": 0.1,
        "warmup_steps": 20,
        "agc_clipping": 0.01,
        "checkpoint_every": 200,
        "log_every": 50,
    }
    seeds = [0]
    if quick:  # one model at two seeds: the second trial's programs come from the caches
        axes = {"model_kwargs.stage_sizes": [[1]], "model_kwargs.width_multiplier": [0.0625]}
        seeds = [0, 1]
        fixed.update(
            {"dataset_kwargs.num_examples": 128},
            image_size=8,
            batch_size=16,
            num_steps=4,
            eval_every=1,
            warmup_steps=1,
            log_every=2,
            checkpoint_every=4,
        )
    else:
        axes = {
            "model_kwargs.stage_sizes": [[1, 1, 1, 1], [2, 2, 2, 2]],
            "model_kwargs.width_multiplier": [0.0625, 0.125, 0.25],
        }
        # 10000 images (and 10000 held out), 64 epochs: every learning curve was still
        # falling steeply at 4000 steps (400 steps on 4000 images stayed near chance).
        fixed.update({"dataset_kwargs.num_examples": 10000}, num_steps=10000, eval_every=1000)
    return studies.Study(
        name="loss_compute" + ("_quick" if quick else ""),
        configs=studies.grid(**axes, seed=seeds),
        trial=train_trial_with_evals,
        check=common.check_train_config,
        setup=common.setup,
        fixed=fixed,
        objective="test_loss",
        fit=fit,
        plot=plot,
    )
