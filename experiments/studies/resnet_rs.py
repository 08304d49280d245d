r"""ResNet-RS scaling strategies (Bello et al. 2021, "Revisiting ResNets").

  python -m archjax.studies run experiments/studies/resnet_rs.py --quick
  python -m archjax.studies fit experiments/studies/resnet_rs.py --quick
  python -m archjax.studies plot experiments/studies/resnet_rs.py --quick

One small ResNet-RS (``resnetrs50``'s block: ResNet-D, SE, conv stem pool) scaled
from the same base by depth, by width or by input resolution, each to about 2x
and 4x the base FLOPs, on the generated ``shapes`` (rendered at each resolution:
finer images hold more detail, unlike upsampled digits). Each model trains once
at a constant learning rate (after warmup); the held-out error at the first
evaluation is the short regime and at the end the long one (the paper's "10 vs
350 epochs" in shape). Claims: "scale model depth in regimes where overfitting
can occur (width scaling is preferable otherwise)"; "increase image resolution
more slowly".
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from archjax import studies
from experiments.studies import common, loss_compute

BASE = {
    "model_kwargs.stage_sizes": [1, 1, 1, 1],
    "model_kwargs.width_multiplier": 0.125,
    "image_size": 16,
}
# Each strategy turns one knob of the base to about 2x and 4x its FLOPs.
LEVELS = {
    "depth": ("model_kwargs.stage_sizes", [[2, 2, 2, 2], [3, 4, 6, 3]]),
    "width": ("model_kwargs.width_multiplier", [0.1875, 0.25]),
    "resolution": ("image_size", [24, 32]),
}
# Quick: one stage (each of the four models compiles its own programs; fewer layers
# compile faster), one level per strategy.
QUICK_BASE = {
    "model_kwargs.stage_sizes": [1],
    "model_kwargs.width_multiplier": 0.0625,
    "image_size": 8,
}
QUICK_LEVELS = {
    "depth": ("model_kwargs.stage_sizes", [[2]]),
    "width": ("model_kwargs.width_multiplier", [0.125]),
    "resolution": ("image_size", [12]),
}
STRATEGIES = ("depth", "width", "resolution")


def trial(config, trial):
    """The main job with the held-out loss and error at every evaluation."""
    return loss_compute.train_trial_with_evals(_overrides(config), trial)


def _configs(base, levels, seeds):
    """Seed-major, so that a study stopped part-way has every model at the first seeds."""
    configs = []
    for s in seeds:
        configs.append({"strategy": "base", "level": 0, **base, "seed": s})
        for name, (key, values) in levels.items():
            for level, value in enumerate(values, start=1):
                configs.append({"strategy": name, "level": level, **base, key: value, "seed": s})
    return configs


def _lengths(rows):
    """(short, long): the first and the last evaluation step."""
    steps = loss_compute.eval_steps(rows[0])
    return steps[0], steps[-1]


def _table(rows):
    """Per (strategy, level): FLOPs and the mean/std over seeds of error and loss per length."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("No COMPLETE trials to fit; run the study first.")
    lengths = _lengths(done)
    table = []
    for key in sorted({(r["strategy"], r["level"]) for r in done}):
        mine = [r for r in done if (r["strategy"], r["level"]) == key]
        entry = {
            "strategy": key[0],
            "level": key[1],
            "seeds": len(mine),
            "flops_per_example": mine[0]["flops_per_example"],
            "params": mine[0]["params"],
        }
        for name, steps in zip(("short", "long"), lengths, strict=True):
            for metric in ("error", "loss"):
                values = [r[f"test_{metric}_at_{steps}"] for r in mine]
                entry[f"{name}_{metric}"] = float(np.mean(values))
                entry[f"{name}_{metric}_std"] = float(np.std(values))
        table.append(entry)
    return lengths, table


def fit(rows):
    """Error per strategy and length; each strategy's gain over the base at its top level."""
    (short, long_), table = _table(rows)
    base = next(e for e in table if e["strategy"] == "base")
    gains = {}
    for length in ("short", "long"):
        for s in STRATEGIES:
            mine = [e for e in table if e["strategy"] == s]
            if not mine:
                continue
            top = max(mine, key=lambda e: e["level"])
            n = min(top["seeds"], base["seeds"])
            # Standard error of a difference of two means over seeds.
            se = np.hypot(top[f"{length}_error_std"], base[f"{length}_error_std"]) / np.sqrt(n)
            gains[f"{length}_{s}"] = {
                "error_drop": base[f"{length}_error"] - top[f"{length}_error"],
                "error_drop_se": float(se),
                "loss_drop": base[f"{length}_loss"] - top[f"{length}_loss"],
                "flops_ratio": top["flops_per_example"] / base["flops_per_example"],
            }
    return {"short_steps": short, "long_steps": long_, "gains_at_top_level": gains, "table": table}


def plot(rows, curves, outdir):
    (short, long_), table = _table(rows)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    base = next(e for e in table if e["strategy"] == "base")
    for ax, length, steps in zip(axes, ("short", "long"), (short, long_), strict=True):
        for i, s in enumerate(STRATEGIES):
            mine = [base] + sorted(
                (e for e in table if e["strategy"] == s), key=lambda e: e["level"]
            )
            x = [e["flops_per_example"] for e in mine]
            y = [100 * e[f"{length}_error"] for e in mine]
            err = [100 * e[f"{length}_error_std"] for e in mine]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i}", label=f"scale {s}")
        ax.set(
            xscale="log",
            xlabel="FLOPs per example (forward)",
            title=f"{length} training ({steps} steps)",
        )
    axes[0].set_ylabel("held-out error (%), mean and std over seeds")
    axes[0].legend(fontsize=8)
    os.makedirs(outdir, exist_ok=True)
    fig.tight_layout()
    path = os.path.join(outdir, "resnet_rs_scaling.png")
    fig.savefig(path, dpi=120)
    return [path]


def _overrides(config):
    """The main job's overrides: the config less its labels."""
    return {k: v for k, v in config.items() if k not in ("strategy", "level")}


def check(config):
    common.check_train_config(_overrides(config))


def define(quick: bool = False) -> studies.Study:
    fixed = {
        "model": "resnetrs50",
        "dataset": "shapes",
        "num_devices": 1,
        "batch_size": 64,
        "schedule": "constant",
        "learning_rate": 0.1,
        "warmup_steps": 20,
        "checkpoint_every": 200,
        "log_every": 50,
    }
    if quick:
        configs = _configs(QUICK_BASE, QUICK_LEVELS, seeds=[0])
        fixed.update(
            **{"dataset_kwargs.num_examples": 128},
            batch_size=16,
            num_steps=4,
            eval_every=2,
            warmup_steps=1,
            log_every=2,
            checkpoint_every=4,
        )
    else:
        configs = _configs(BASE, LEVELS, seeds=[0, 1, 2])
        # 1000 training images: long training overfits the larger models.
        fixed.update({"dataset_kwargs.num_examples": 1000}, num_steps=300, eval_every=75)
    return studies.Study(
        name="resnet_rs" + ("_quick" if quick else ""),
        configs=configs,
        trial=trial,
        check=check,
        setup=common.setup,
        fixed=fixed,
        objective="test_loss",
        fit=fit,
        plot=plot,
    )
