r"""Plain vs residual nets, and VGG with BatchNorm: training error vs depth (degradation).

  python -m archjax.studies run experiments/studies/plain_residual.py --quick
  python -m archjax.studies fit experiments/studies/plain_residual.py --quick
  python -m archjax.studies plot experiments/studies/plain_residual.py --quick

He et al., "Deep Residual Learning for Image Recognition" (2016): a deeper plain
network has a *higher training error* than a shallower one (the degradation
problem), while residual networks of the same depths improve with depth. The
CIFAR-style ResNets 20/32/56 are trained with and without shortcuts (the registry's
``residual=False``), and VGG-11/13/16/19 with BatchNorm (Simonyan & Zisserman) as a
second plain family, each over several seeds; the trial is the main job
(``experiments.studies.common.train_trial``) on the generated ``shapes`` (10 classes,
10000 training images), 1000 steps, and the ResNets again at 3000 steps (a follow-up
fixed before it ran). Training error is the final model's error on its
own un-augmented training images (BatchNorm in eval mode); the running error of the
last ``log_every`` training steps (BatchNorm in training mode), as He et al. plot it,
is reported beside it, with the steps each net spends on the chance plateau (its
running accuracy below twice chance) before it starts to learn.

The budget was chosen on the baselines alone, before any deeper net ran (one seed):
residual ResNet-20 at 16 px ends at 12.4% training error (not at a floor, so deeper
residual nets can show a gain), and VGG-11's learning rate is the best of 0.1 / 0.03 /
0.01 for it (0.1 stays at chance); docs/reproductions.md has the numbers.
"""

from __future__ import annotations

import os

import numpy as np

from archjax import studies
from archjax.studies import plots
from experiments.plotting import read_metrics
from experiments.studies import common

RESNETS = ["resnet20", "resnet32", "resnet56"]
VGGS = ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
LONG_STEPS = 3000  # the follow-up's run length (see define)
DEPTH = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet56": 56, "vgg11_bn": 11,
         "vgg13_bn": 13, "vgg16_bn": 16, "vgg19_bn": 19}  # fmt: skip


# A net "leaves the chance plateau" at the first train-log step whose running accuracy is
# at least twice chance (the study's 10 classes: 0.2).
PLATEAU_ACCURACY = 0.2


def train_error_trial(config, trial):
    """The main job, plus the final model's error on the training images, the running
    training loss and error of its last train-log window, and the steps it spent on the
    chance plateau (``plateau_steps``: the first train-log step at twice chance accuracy,
    the whole run if never; ``left_plateau``: 1 if it got there)."""
    metrics = dict(common.train_trial(config, trial, train_split=True))
    records = [r for r in read_metrics(os.path.join(trial.workdir, "metrics.jsonl"))
               if r["split"] == "train"]  # fmt: skip
    last = records[-1]
    left = [r["step"] for r in records if r["accuracy"] >= PLATEAU_ACCURACY]
    metrics["train_error"] = 1.0 - metrics["train_accuracy"]
    metrics["train_loss_running"] = last["loss"]
    metrics["train_error_running"] = 1.0 - last["accuracy"]
    metrics["plateau_steps"] = left[0] if left else last["step"]
    metrics["left_plateau"] = int(bool(left))
    metrics["test_error"] = 1.0 - metrics["test_accuracy"]
    return metrics


def _family(row) -> str:
    if row["model"].startswith("vgg"):
        return "VGG (BN)"
    return "residual" if row["model_kwargs.residual"] else "plain"


FAMILIES = ("plain", "residual", "VGG (BN)")


def _groups(done):
    """``(steps, family, rows)`` for every run length and family present, shorter runs first."""
    for steps in sorted({r["steps"] for r in done}):
        for family in FAMILIES:
            mine = [r for r in done if r["steps"] == steps and _family(r) == family]
            if mine:
                yield steps, family, mine


def fit(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    table = []
    for steps, family, mine in _groups(done):
        for depth in sorted({DEPTH[r["model"]] for r in mine}):
            at = [r for r in mine if DEPTH[r["model"]] == depth]
            tr = [r["train_error"] for r in at]
            te = [r["test_error"] for r in at]
            run = [r["train_error_running"] for r in at]
            plateau = [r["plateau_steps"] for r in at]
            table.append({"family": family, "steps": steps, "depth": depth, "seeds": len(at),
                          "train_error": float(np.mean(tr)), "train_error_std": float(np.std(tr)),
                          "test_error": float(np.mean(te)), "test_error_std": float(np.std(te)),
                          "train_error_running": float(np.mean(run)),
                          "plateau_steps": float(np.mean(plateau)),
                          "plateau_steps_std": float(np.std(plateau)),
                          "left_plateau": int(sum(r["left_plateau"] for r in at)),
                          "per_seed_train_error": [round(float(x), 4) for x in tr],
                          "params": at[0]["params"]})  # fmt: skip
    result = {"table": table}
    # Degradation: the change of mean training error from the shallowest to the deepest net,
    # with a seed-bootstrap interval (seeds resampled within each depth).
    rng = np.random.default_rng(0)
    for steps, family, mine in _groups(done):
        depths = sorted({DEPTH[r["model"]] for r in mine})
        if len(depths) < 2:
            continue
        lo = np.array([r["train_error"] for r in mine if DEPTH[r["model"]] == depths[0]])
        hi = np.array([r["train_error"] for r in mine if DEPTH[r["model"]] == depths[-1]])
        boot = [rng.choice(hi, hi.size).mean() - rng.choice(lo, lo.size).mean()
                for _ in range(2000)]  # fmt: skip
        result[f"{family}, {steps} steps: deepest - shallowest train error"] = {
            "depths": [depths[0], depths[-1]],
            "delta": float(hi.mean() - lo.mean()),
            "interval": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        }
    return result


def plot(rows, curves, outdir):
    from matplotlib.figure import Figure

    table = fit(rows)["table"]
    lengths = sorted({e["steps"] for e in table})
    fig = Figure(figsize=(13, 3.5), dpi=120)
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("train_error", "test_error", "plateau_steps"), strict=True):
        for i, family in enumerate(FAMILIES):
            for steps in lengths:  # the longer runs dashed
                mine = [e for e in table if e["family"] == family and e["steps"] == steps]
                if mine:
                    ax.errorbar([e["depth"] for e in mine], [e[metric] for e in mine],
                                yerr=[e[f"{metric}_std"] for e in mine], capsize=3,
                                fmt="o-" if steps == lengths[0] else "s--", color=f"C{i}",
                                label=f"{family}, {steps} steps")  # fmt: skip
        label = {"plateau_steps": "steps at chance"}.get(metric, metric.replace("_", " "))
        ax.set(xlabel="depth (weight layers)", ylabel=f"{label} (mean, s.d.)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(outdir, "error_vs_depth.png")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    labels = {r["trial"]: f"{r['model']} {_family(r)} {r['steps']} steps s{r['seed']}"
              for r in rows if r["state"] == "COMPLETE"}  # fmt: skip
    return [path, plots.curves(curves, f"{outdir}/test_loss.png", ylabel="test loss",
                               labels=labels)]  # fmt: skip


def _configs(resnets, vggs, seeds, resnet_kwargs, vgg_kwargs):
    """Seed-major order: the queue finishes every depth of one seed before the next seed."""
    configs = []
    for seed in seeds:
        for model in resnets:
            for residual in (False, True):
                configs.append({"model": model, "model_kwargs.residual": residual,
                                **resnet_kwargs, "seed": seed})  # fmt: skip
        for model in vggs:
            configs.append({"model": model, **vgg_kwargs, "seed": seed})
    return configs


def define(quick: bool = False) -> studies.Study:
    steps = 4 if quick else 1000
    # ResNets at 16 px (the 6n+2 nets keep their 3 stages at 16, 8, 4 px), quarter width
    # (4/8/16 channels), SGD lr 0.1 as He et al.; VGG's five max-pools need 32 px, 1/16
    # width (4..32 channels, a 64-wide head), lr 0.03 (chosen on VGG-11 alone: 0.1 stays
    # at chance).
    resnet_kwargs = {"image_size": 8 if quick else 16, "model_kwargs.width_multiplier": 0.25}
    vgg_kwargs = {"image_size": 32, "model_kwargs.width_multiplier": 1 / 16,
                  "model_kwargs.head_width": 1024, "learning_rate": 0.03}  # fmt: skip
    if quick:
        configs = _configs(["resnet8"], [], [0], resnet_kwargs, vgg_kwargs)
    else:
        configs = _configs(RESNETS, VGGS, [0, 1, 2], resnet_kwargs, vgg_kwargs)
        # The follow-up, fixed before it ran (session 8): the 1000-step run left residual
        # nets' training error rising with depth, the deeper nets sitting longer at chance;
        # the same ResNets, plain and residual, trained 3x longer, everything else equal.
        long = {"num_steps": LONG_STEPS, "eval_every": LONG_STEPS,
                "checkpoint_every": LONG_STEPS // 2}  # fmt: skip
        configs += [{**c, **long} for c in configs if not c["model"].startswith("vgg")]
    return studies.Study(
        name="plain_residual" + ("_quick" if quick else ""),
        configs=configs,
        trial=train_error_trial,
        fixed={
            "dataset": "shapes",
            "dataset_kwargs.num_examples": 128 if quick else 10000,
            "num_steps": steps,
            "batch_size": 32 if quick else 64,
            "eval_batch_size": 128 if quick else 512,
            "learning_rate": 0.1,
            "log_every": 2 if quick else 50,
            "eval_every": steps,
            "checkpoint_every": steps // 2,
            "warmup_steps": 1 if quick else 20,
            "label_smoothing": 0.0,
            "random_crop_pad": 0,
            "num_devices": 1,
        },
        objective="train_error",
        check=common.check_train_config,
        setup=common.setup,
        fit=fit,
        plot=plot,
    )
