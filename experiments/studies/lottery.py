r"""Lottery tickets with rewinding (Frankle et al., "Stabilizing the Lottery Ticket Hypothesis").

  python -m archjax.studies run experiments/studies/lottery.py [--quick]
  python -m archjax.studies fit experiments/studies/lottery.py [--quick]
  python -m archjax.studies plot experiments/studies/lottery.py [--quick]

One trial is one IMP chain of main-job runs (``--config.sparsity.imp_from``): a
dense run that keeps its state at step k (``sparsity.rewind_step``), then rounds
that prune ``fraction`` of the remaining weights by global magnitude and rewind to
step k, down to >= 90% sparsity. Chains rewind to k = 0 (the original lottery
ticket) or to k a few percent into training; the late-rewinding chain also trains
each of its masks from a fresh random initialization (``sparsity.rewind=reinit``),
the control of the lottery-ticket experiments. Claim: with late rewinding the
sparse networks match the dense accuracy, and beat the same mask reinitialized.
"""

from __future__ import annotations

import os

from archjax import sparsity, studies
from experiments.studies import common, sparse_common

STEPS, QUICK_STEPS = 100, 6


def imp_chain(config, trial):
    """Dense run, then ``rounds`` IMP rounds (and reinitialized controls) of one chain."""
    from experiments import train as main_job  # JAX loads here, in the worker

    base = {k: v for k, v in config.items() if k not in ("rounds", "fraction", "controls")}

    def run(name, **overrides):
        cfg = common.train_config({**base, **overrides})
        summary = main_job.train_and_evaluate(cfg, os.path.join(trial.workdir, name))
        if summary["interrupted"]:
            raise KeyboardInterrupt(f"trial {trial.number} interrupted by a signal")
        return summary

    dense = run("round0")  # method "none": a dense run that keeps its step-k state
    out = {"dense_accuracy": dense["test_accuracy"]}
    prev = os.path.join(trial.workdir, "round0")
    targets = sparsity.imp_sparsities(config["fraction"], config["rounds"])
    for r, target in enumerate(targets, 1):
        prune = {
            "sparsity.method": "magnitude",
            "sparsity.target": target,
            "sparsity.imp_from": prev,
        }
        imp = run(f"round{r}", **prune)
        out[f"sparsity_{r}"] = target
        out[f"imp_accuracy_{r}"] = imp["test_accuracy"]
        if config["controls"]:  # the same mask from a fresh initialization (another seed)
            control = run(
                f"reinit{r}", **prune, **{"sparsity.rewind": "reinit", "seed": config["seed"] + 1}
            )
            out[f"reinit_accuracy_{r}"] = control["test_accuracy"]
        trial.report(r, 1.0 - imp["test_accuracy"])
        out["test_loss"] = imp["test_loss"]
        prev = os.path.join(trial.workdir, f"round{r}")
    return out


def _series(rows):
    """``{label: [(sparsity, mean accuracy, sd), ...]}`` over seeds, and the dense level."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    dense = sparse_common.mean_sd([r["dense_accuracy"] for r in done])
    series = {}
    for k in sorted({r["sparsity.rewind_step"] for r in done}):
        mine = [r for r in done if r["sparsity.rewind_step"] == k]
        rounds = sum(key.startswith("imp_accuracy_") for key in mine[0])
        for kind in ("imp", "reinit"):
            if f"{kind}_accuracy_1" not in mine[0]:
                continue
            label = f"IMP, rewind to step {k}" if kind == "imp" else f"same masks reinit (k={k})"
            series[label] = [
                (
                    mine[0][f"sparsity_{r}"],
                    *sparse_common.mean_sd([m[f"{kind}_accuracy_{r}"] for m in mine]),
                )
                for r in range(1, rounds + 1)
            ]
    return dense, series


def fit(rows):
    dense, series = _series(rows)
    out = {"dense_accuracy": dense[0], "dense_sd": dense[1]}
    for label, points in series.items():
        for s, mean, sd in points:
            out[f"{label} @ {s:.3f}"] = [round(mean, 4), round(sd, 4)]
        # The highest sparsity whose mean accuracy is within one dense sd + 1 point of dense.
        matched = [s for s, mean, _ in points if mean >= dense[0] - dense[1] - 0.01]
        out[f"{label}: max matching sparsity"] = max(matched) if matched else None
    return out


def plot(rows, curves, outdir):
    dense, series = _series(rows)
    path = sparse_common.lines(
        {"dense": [(s, *dense) for s, _, _ in next(iter(series.values()))], **series},
        f"{outdir}/lottery.png",
        xlabel="sparsity (fraction of prunable weights removed)",
        ylabel="test accuracy",
        title=f"IMP with rewinding, {rows[0]['model']} (w 0.5) on 8x8 digits",
    )
    return [path]


def define(quick: bool = False) -> studies.Study:
    steps = QUICK_STEPS if quick else STEPS
    if quick:
        configs = [{"model": "resnet8", "sparsity.rewind_step": 1, "controls": True, "seed": 0}]
    else:  # k = 0 and k = 1%, 3%, 7% of training; controls on the 3% chains
        configs = [  # the claim is about deeper nets: the paper's CIFAR ResNet-20 (half width)
            {
                "model": "resnet20",
                "sparsity.rewind_step": k,
                "controls": k == round(0.03 * steps),
                "seed": seed,
            }
            for k in (0, *(round(f * steps) for f in (0.01, 0.03, 0.07)))
            for seed in (0, 1, 2)
        ]
    return studies.Study(
        name="lottery" + ("_quick" if quick else ""),
        configs=configs,
        trial=imp_chain,
        check=lambda c: common.check_train_config(
            {k: v for k, v in c.items() if k not in ("rounds", "fraction", "controls")}
        ),
        setup=common.setup,
        fixed={
            **sparse_common.base(steps),
            "rounds": 1 if quick else 3,
            "fraction": 0.55,  # 55%, 80%, 91% sparsity after rounds 1..3
        },
        objective="test_loss",
        fit=fit,
        plot=plot,
    )
