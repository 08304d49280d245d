r"""8-bit (and 4-bit) vs float32 Adam state: ResNet-20 on digits, several seeds.

  python -m archjax.studies run experiments/studies/optim_8bit.py --quick
  python -m archjax.studies fit experiments/studies/optim_8bit.py --quick
  python -m archjax.studies plot experiments/studies/optim_8bit.py --quick

Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (2022): 8-bit
block-wise Adam states match 32-bit ones. Each trial is the main job
(``experiments.studies.common.train_trial``) with AdamW (lr 3e-3, weight decay 0.05)
and ``optimizer_state_bits`` in {32, 8, 4}; everything else is the default config
(ResNet-20, digits at 16 px, 300 steps, batch 128). This replaces the former
``experiments/optim_8bit.py`` script: the same runs, now resumable and in the store.
"""

from __future__ import annotations

import os

import numpy as np

from archjax import studies
from experiments.studies import common

# The former script's settings: AdamW on the default main job, one evaluation at the end.
ADAMW = {"optimizer": "adamw", "learning_rate": 3e-3, "weight_decay": 0.05}
# A tiny main-job run for --quick (digits at 8 px, a quarter-width ResNet-8).
QUICK = {"model": "resnet8", "model_kwargs.width_multiplier": 0.25, "image_size": 8,
         "batch_size": 32, "eval_batch_size": 128, "num_steps": 4, "log_every": 2,
         "checkpoint_every": 4, "warmup_steps": 1, "num_devices": 1}  # fmt: skip


def fit(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    acc = {}
    for r in done:
        acc.setdefault(r["optimizer_state_bits"], {})[r["seed"]] = r["test_accuracy"]
    out = {}
    for bits in sorted(acc, reverse=True):
        values = [acc[bits][s] for s in sorted(acc[bits])]
        entry = {"seeds": sorted(acc[bits]), "test_accuracy": values,
                 "mean": float(np.mean(values)), "std": float(np.std(values))}  # fmt: skip
        shared = sorted(set(acc[bits]) & set(acc.get(32, {})))
        if bits != 32 and shared:  # paired by seed: same data order and initialization
            diff = [acc[bits][s] - acc[32][s] for s in shared]
            entry["minus_fp32_per_seed"] = diff
            entry["minus_fp32_mean"] = float(np.mean(diff))
        out[f"bits{bits}"] = entry
    return out


def plot(rows, curves, outdir):
    from matplotlib.figure import Figure

    result = fit(rows)
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    for i, entry in enumerate(result.values()):
        ax.plot([i] * len(entry["test_accuracy"]), entry["test_accuracy"], "o", color="C0",
                alpha=0.6, label="seed" if i == 0 else None)  # fmt: skip
        ax.errorbar(i + 0.15, entry["mean"], yerr=entry["std"], fmt="s", color="C1", capsize=3,
                    label="mean, s.d." if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(result)), [n.replace("bits", "") + "-bit" for n in result])
    ax.set(ylabel="test accuracy", title="Adam state bits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(outdir, "accuracy_vs_bits.png")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return [path]


def define(quick: bool = False) -> studies.Study:
    bits = [32, 8] if quick else [32, 8, 4]
    seeds = [0] if quick else [0, 1, 2]
    fixed = {**ADAMW, **(QUICK if quick else {})}
    fixed["eval_every"] = fixed.get("num_steps", common.train_config({}).num_steps)
    return studies.Study(
        name="optim_8bit" + ("_quick" if quick else ""),
        # Seed-major: a partial run already compares every bit width.
        configs=studies.grid(seed=seeds, optimizer_state_bits=bits),
        trial=common.train_trial,
        fixed=fixed,
        objective="test_accuracy",
        direction="maximize",
        check=common.check_train_config,
        setup=common.setup,
        fit=fit,
        plot=plot,
    )
