r"""ResNet-RS scaling strategies (Bello et al. 2021, "Revisiting ResNets").

  python -m archjax.studies run experiments/studies/resnet_rs.py --quick
  python -m archjax.studies fit experiments/studies/resnet_rs.py --quick
  python -m archjax.studies plot experiments/studies/resnet_rs.py --quick

One small ResNet-RS (``resnetrs50``'s block: ResNet-D, SE, conv stem pool) scaled
from the same base by depth, by width or by input resolution, each to about 2x
and 4x the base FLOPs, on the generated ``shapes`` (rendered at each resolution:
finer images hold more detail, unlike upsampled digits). Every model trains twice,
in separate cosine runs: a short one and a long one (the paper's "10 vs 350
epochs" in shape), and reports its held-out error and its accuracy on its own
training images (the generalization gap: whether the regime overfits). Claims:
"scale model depth in regimes where overfitting can occur (width scaling is
preferable otherwise)"; "increase image resolution more slowly".

The base is 32 px: ``resnetrs50``'s stem divides the side by 4, and at 16 px the
base stays near chance on ``shapes`` (see docs/reproductions.md).
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from archjax import studies
from experiments.studies import common

BASE = {
    "model_kwargs.stage_sizes": [1, 1, 1, 1],
    "model_kwargs.width_multiplier": 0.125,
    "image_size": 32,
}
# Each strategy turns one knob of the base to about 2x and 4x its FLOPs.
LEVELS = {
    "depth": ("model_kwargs.stage_sizes", [[2, 2, 2, 2], [3, 4, 6, 3]]),
    "width": ("model_kwargs.width_multiplier", [0.1875, 0.25]),
    "resolution": ("image_size", [48, 64]),
}
# Training steps of the two regimes (separate cosine runs, as the paper's 10 vs 350
# epochs): ~10 and ~50 epochs of the 2000 training images at batch 64.
LENGTHS = {"short": 300, "long": 1500}
# Seeds per length: the short runs are cheap and their seed spread is large (3 seeds left
# the short regime's differences within a standard error), so they get more.
SEEDS = {"short": range(8), "long": range(3)}
# Quick: one stage (each of the four models compiles its own programs; fewer layers
# compile faster), one level per strategy, a constant rate (both lengths share programs).
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
QUICK_LENGTHS = {"short": 2, "long": 4}
STRATEGIES = ("depth", "width", "resolution")
LABELS = ("strategy", "level", "length")


def trial(config, trial):
    """The main job, plus the final model's loss and accuracy on its training images."""
    return common.train_trial(_overrides(config), trial, train_split=True)


def _configs(base, levels, lengths, seeds):
    """Seed-major, so that a study stopped part-way has every model at the first seeds.

    ``seeds``: per length, the seeds to train.
    """
    models = [("base", 0, {})]
    for name, (key, values) in levels.items():
        models += [(name, level, {key: v}) for level, v in enumerate(values, start=1)]
    configs = []
    for s in sorted(set().union(*seeds.values())):
        for name, level, knob in models:
            for length, steps in lengths.items():
                if s not in seeds[length]:
                    continue
                configs.append(
                    {
                        "strategy": name,
                        "level": level,
                        "length": length,
                        **base,
                        **knob,
                        "num_steps": steps,
                        "eval_every": steps,
                        "seed": s,
                    }
                )
    return configs


def _table(rows):
    """Per (strategy, level, length): FLOPs and mean/std over seeds of error, loss and gap."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("No COMPLETE trials to fit; run the study first.")
    table = []
    for key in sorted({(r["strategy"], r["level"], r["length"]) for r in done}):
        mine = [r for r in done if (r["strategy"], r["level"], r["length"]) == key]
        test_error = [1 - r["test_accuracy"] for r in mine]
        train_error = [1 - r["train_accuracy"] for r in mine]
        gap = [r["train_accuracy"] - r["test_accuracy"] for r in mine]
        table.append(
            {
                "strategy": key[0],
                "level": key[1],
                "length": key[2],
                "steps": mine[0]["steps"],
                "seeds": len(mine),
                "flops_per_example": mine[0]["flops_per_example"],
                "params": mine[0]["params"],
                "error": float(np.mean(test_error)),
                "error_std": float(np.std(test_error)),
                "loss": float(np.mean([r["test_loss"] for r in mine])),
                "train_error": float(np.mean(train_error)),
                "gap": float(np.mean(gap)),
                "gap_std": float(np.std(gap)),
            }
        )
    return table


def fit(rows):
    """Error per model and length; each strategy's gain over the base at its top level.

    ``error_drop_per_doubling`` divides the gain by log2 of the FLOPs ratio, so that
    strategies whose top levels cost somewhat different FLOPs compare fairly.
    """
    table = _table(rows)
    gains = {}
    for length in LENGTHS:
        base = next((e for e in table if e["strategy"] == "base" and e["length"] == length), None)
        if base is None:
            continue
        for s in STRATEGIES:
            mine = [e for e in table if e["strategy"] == s and e["length"] == length]
            if not mine:
                continue
            top = max(mine, key=lambda e: e["level"])
            n = min(top["seeds"], base["seeds"])
            # Standard error of a difference of two means over seeds.
            se = np.hypot(top["error_std"], base["error_std"]) / np.sqrt(n)
            ratio = top["flops_per_example"] / base["flops_per_example"]
            drop = base["error"] - top["error"]
            gains[f"{length}_{s}"] = {
                "error_drop": drop,
                "error_drop_se": float(se),
                "error_drop_per_doubling": drop / float(np.log2(ratio)),
                "loss_drop": base["loss"] - top["loss"],
                "gap_change": top["gap"] - base["gap"],
                "flops_ratio": ratio,
            }
    steps = {e["length"]: e["steps"] for e in table}
    return {
        "short_steps": steps.get("short"),
        "long_steps": steps.get("long"),
        "gains_at_top_level": gains,
        "table": table,
    }


def plot(rows, curves, outdir):
    table = _table(rows)
    lengths = [n for n in LENGTHS if any(e["length"] == n for e in table)]
    fig = Figure(figsize=(5 * (len(lengths) + 1), 4))
    axes = fig.subplots(1, len(lengths) + 1)
    for col, length in enumerate(lengths):
        mine = [e for e in table if e["length"] == length]
        base = [e for e in mine if e["strategy"] == "base"]
        for i, s in enumerate(STRATEGIES):
            line = base + sorted((e for e in mine if e["strategy"] == s), key=lambda e: e["level"])
            x = [e["flops_per_example"] for e in line]
            color = f"C{i}"
            axes[col].errorbar(
                x,
                [100 * e["error"] for e in line],
                yerr=[100 * e["error_std"] for e in line],
                marker="o",
                capsize=3,
                color=color,
                label=f"scale {s}",
            )
            axes[-1].plot(
                x,
                [100 * e["gap"] for e in line],
                marker="o",
                color=color,
                linestyle="-" if length == "long" else ":",
                label=f"{s}, {length}",
            )
        axes[col].set(
            xscale="log",
            xlabel="FLOPs per example (forward)",
            ylabel="held-out error (%), mean and std over seeds",
            title=f"{length} training ({mine[0]['steps']} steps)",
        )
    axes[0].legend(fontsize=8)
    axes[-1].set(
        xscale="log",
        xlabel="FLOPs per example (forward)",
        ylabel="train - held-out accuracy (points)",
        title="generalization gap (dotted: short, solid: long)",
    )
    axes[-1].legend(fontsize=7)
    os.makedirs(outdir, exist_ok=True)
    fig.tight_layout()
    path = os.path.join(outdir, "resnet_rs_scaling.png")
    fig.savefig(path, dpi=120)
    return [path]


def _overrides(config):
    """The main job's overrides: the config less its labels."""
    return {k: v for k, v in config.items() if k not in LABELS}


def check(config):
    common.check_train_config(_overrides(config))


def define(quick: bool = False) -> studies.Study:
    fixed = {
        "model": "resnetrs50",
        "dataset": "shapes",
        "num_devices": 1,
        "batch_size": 64,
        "schedule": "cosine",
        "learning_rate": 0.1,
        "warmup_steps": 20,
        "checkpoint_every": 500,
        "log_every": 100,
    }
    if quick:
        configs = _configs(QUICK_BASE, QUICK_LEVELS, QUICK_LENGTHS, {"short": [0], "long": [0]})
        fixed.update(
            {"dataset_kwargs.num_examples": 128},
            batch_size=16,
            schedule="constant",
            warmup_steps=1,
            log_every=2,
            checkpoint_every=4,
        )
    else:
        configs = _configs(BASE, LEVELS, LENGTHS, SEEDS)
        # 2000 training images (and 2000 held out): the long runs can overfit them.
        fixed.update({"dataset_kwargs.num_examples": 2000})
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
