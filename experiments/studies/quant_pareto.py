r"""Pareto-optimal quantized ResNets (Abdolrashidi et al., 2021) on digits.

  python -m archjax.studies run experiments/studies/quant_pareto.py [--quick]
  python -m archjax.studies fit experiments/studies/quant_pareto.py [--quick]
  python -m archjax.studies plot experiments/studies/quant_pareto.py [--quick]

A ResNet family (widths of the main job's ResNet) trained in float32, bfloat16 compute,
int8 (weights and activations of every layer) and int4 with the first and last layers at
int8 (the paper's policy: ``experiments.quant.common.SCHEMES`` ``w8a8`` and ``w4a4``), all
by QAT from scratch through the main job. Each trial reports test and train accuracy (the
generalization gap) and the cost report's weight bits and BOPs. The fit says which
(scheme, width) points are on the accuracy-vs-size Pareto frontier and whether every
bf16 model is dominated by an int4 and by an int8 model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from archjax import studies
from archjax.studies import fits, plots
from experiments.studies import common

WIDTH = "model_kwargs.width_multiplier"
# Study scheme -> (rules name in experiments.quant.common.SCHEMES, main-job precision).
SCHEMES = {
    "float": ("float", "fp32"),
    "bf16": ("float", "bf16"),
    "int8": ("w8a8", "fp32"),
    "int4": ("w4a4", "fp32"),
}


def _split(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The scheme and the main job's overrides of a trial config."""
    scheme = config.get("scheme")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r}; allowed: {', '.join(SCHEMES)}.")
    overrides = {k: v for k, v in config.items() if k != "scheme"}
    overrides["precision"] = SCHEMES[scheme][1]
    return scheme, overrides


def check(config: dict[str, Any]) -> None:
    _, overrides = _split(config)
    common.check_train_config(overrides)


def cost_rules(scheme: str) -> list:
    """The rules whose cost report sizes a ``scheme`` model (bf16: a 16-bit float format)."""
    from archjax.quant import FloatFormat, QuantRule
    from experiments.quant import common as quant_common

    if scheme == "bf16":
        bf16 = FloatFormat(exponent_bits=8, mantissa_bits=7)
        return [QuantRule(pattern=".*", weight=bf16, activation=bf16)]
    return quant_common.scheme_rules(SCHEMES[scheme][0])


def qat_trial(config: dict[str, Any], trial: studies.Trial) -> dict[str, Any]:
    """QAT of one (scheme, width, seed) through the main job; accuracies and costs."""
    from archjax.quant import quantize_model, report
    from experiments.quant import common as quant_common

    scheme, overrides = _split(config)
    rules = quant_common.scheme_rules(SCHEMES[scheme][0])
    wrap = (lambda m: quantize_model(m, rules)) if rules else None
    metrics = common.train_trial(overrides, trial, wrap_model=wrap, train_split=True)
    cfg = common.train_config(overrides)
    train_ds, _ = quant_common.datasets(cfg)
    cost = report(
        quant_common.model_for(cfg, train_ds), cost_rules(scheme), (1, *train_ds.image_shape)
    )
    weight_bits = sum(layer.params * layer.weight_bits for layer in cost.layers)
    return {
        **metrics,
        "weight_bits": weight_bits,
        "bops": cost.bops,
        "gap": metrics["train_accuracy"] - metrics["test_accuracy"],
    }


def _points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scheme, width): means over seeds of accuracies and gap, with the seed count."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("no COMPLETE trials to fit; run the study first.")
    out = []
    for scheme in SCHEMES:
        for width in sorted({r[WIDTH] for r in done if r["scheme"] == scheme}):
            group = [r for r in done if r["scheme"] == scheme and r[WIDTH] == width]
            out.append(
                {
                    "scheme": scheme,
                    "width": width,
                    "seeds": len(group),
                    "weight_bits": group[0]["weight_bits"],
                    "bops": group[0]["bops"],
                    **{
                        f"{k}_{stat}": float(fn([r[k] for r in group]))
                        for k in ("test_accuracy", "train_accuracy", "gap")
                        for stat, fn in (("mean", np.mean), ("std", np.std))
                    },
                }
            )
    return out


def _dominated(point: dict[str, Any], others: list[dict[str, Any]], cost: str) -> bool:
    """Whether some point of ``others`` costs no more and is more accurate (or ties on
    accuracy at a lower cost)."""
    acc, c = point["test_accuracy_mean"], point[cost]
    return any(
        (o[cost] <= c and o["test_accuracy_mean"] > acc)
        or (o[cost] < c and o["test_accuracy_mean"] >= acc)
        for o in others
    )


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    points = _points(rows)
    xy = np.array([[p["weight_bits"], p["test_accuracy_mean"]] for p in points])
    front = fits.pareto_front(xy, ["minimize", "maximize"])
    by_scheme = {s: [p for p in points if p["scheme"] == s] for s in SCHEMES}
    result: dict[str, Any] = {
        "points": points,
        "frontier": [
            f"{p['scheme']} w={p['width']}" for p, on in zip(points, front, strict=True) if on
        ],
        "mean_gap": {
            s: float(np.mean([p["gap_mean"] for p in ps])) for s, ps in by_scheme.items() if ps
        },
    }
    for cost in ("weight_bits", "bops"):
        for low in ("int4", "int8"):
            if by_scheme["bf16"] and by_scheme[low]:
                hits = [_dominated(p, by_scheme[low], cost) for p in by_scheme["bf16"]]
                result[f"bf16_dominated_by_{low}_{cost}"] = f"{sum(hits)}/{len(hits)}"
    return result


def plot(rows: list[dict[str, Any]], curves, outdir: str) -> list[str]:
    points = _points(rows)
    xy = np.array([[p["weight_bits"], p["test_accuracy_mean"]] for p in points])
    front = fits.pareto_front(xy, ["minimize", "maximize"])
    paths = [
        plots.pareto(
            xy[:, 0] / 8e3,
            xy[:, 1],
            front,
            f"{outdir}/frontier.png",
            xlabel="weight storage (kB)",
            ylabel="test accuracy (mean over seeds)",
            labels=[f"{p['scheme']} w{p['width']}" for p in points],
            title="quantized ResNets on digits: Pareto frontier",
        )
    ]
    fig = Figure(figsize=(10, 4))
    ax_acc, ax_gap = fig.subplots(1, 2)
    for i, scheme in enumerate(SCHEMES):
        ps = [p for p in points if p["scheme"] == scheme]
        if not ps:
            continue
        kb = [p["weight_bits"] / 8e3 for p in ps]
        ax_acc.errorbar(
            kb,
            [p["test_accuracy_mean"] for p in ps],
            yerr=[p["test_accuracy_std"] for p in ps],
            marker="o",
            color=f"C{i}",
            label=scheme,
            capsize=2,
        )
        ax_gap.errorbar(
            [p["width"] for p in ps],
            [p["gap_mean"] for p in ps],
            yerr=[p["gap_std"] for p in ps],
            marker="o",
            color=f"C{i}",
            label=scheme,
            capsize=2,
        )
    ax_acc.set(
        xscale="log",
        xlabel="weight storage (kB)",
        ylabel="test accuracy",
        title="accuracy vs model size",
    )
    ax_gap.set(
        xscale="log",
        xlabel="width multiplier",
        ylabel="train - test accuracy",
        title="generalization gap",
    )
    for ax in (ax_acc, ax_gap):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(f"{outdir}/curves.png")
    fig.savefig(paths[-1], dpi=120)
    return paths


def define(quick: bool = False) -> studies.Study:
    if quick:
        widths, schemes, seeds, steps = [0.25], ["bf16", "int4"], [0], 3
    else:
        widths, schemes, seeds, steps = [0.25, 0.5, 1.0, 2.0], list(SCHEMES), [0, 1, 2], 150
    return studies.Study(
        name="quant_pareto" + ("_quick" if quick else ""),
        configs=studies.grid(**{WIDTH: widths}, scheme=schemes, seed=seeds),
        trial=qat_trial,
        check=check,
        setup=common.setup,
        fixed={
            "model": "resnet8",
            "image_size": 8,
            "batch_size": 64,
            "eval_batch_size": 256 if not quick else 128,
            "num_steps": steps,
            "warmup_steps": 10 if not quick else 1,
            "log_every": 25 if not quick else 3,
            "eval_every": steps,
            "checkpoint_every": steps,
            "num_devices": 1,
        },
        objective="test_accuracy",
        direction="maximize",
        fit=fit,
        plot=plot,
    )
