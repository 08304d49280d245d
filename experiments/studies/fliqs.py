r"""Mixed integer / floating-point precision vs the best uniform format at equal BOPs
(after FLIQS, Dotzel et al., 2024), on digits.

  python -m archjax.studies run experiments/studies/fliqs.py [--quick]
  python -m archjax.studies fit experiments/studies/fliqs.py [--quick]
  python -m archjax.studies plot experiments/studies/fliqs.py [--quick]

Each conv/dense layer's weights get one of int4, int8, fp4 (e2m1) and fp8 (e4m3);
activations are int8 everywhere, so a layer's BOPs are MACs x weight bits x 8 (the cost
report's convention). ``uniform`` trials put every layer in one format; ``mixed`` trials
take the per-layer formats that ``archjax.quant.mixed.allocate`` picks under a BOPs budget
equal to uniform ``budget_bits``-bit weights, by HAWQ-V2 sensitivities (Hessian trace x
quantization error) of the seed's float model. This is not FLIQS's one-shot search (a
supernet trained with a reinforcement-learning controller): the search here is
sensitivity-based and post-training, followed by the same short QAT fine-tune as the
uniform formats (experiments/studies/hawq.py's pipeline, which this study reuses).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from archjax import studies
from experiments.studies import common, hawq

UNIFORM = ("int4", "fp4", "int8", "fp8")


def formats() -> dict[str, Any]:
    """The candidate formats by name."""
    from archjax.quant import FloatFormat, IntFormat

    return {
        "int4": IntFormat(bits=4),
        "fp4": FloatFormat(exponent_bits=2, mantissa_bits=1, finite_only=True, has_nan=False),
        "int8": IntFormat(bits=8),
        "fp8": FloatFormat(exponent_bits=4, mantissa_bits=3, finite_only=True),
    }


def check(config: dict[str, Any]) -> None:
    if config["scheme"] not in (*UNIFORM, "mixed"):
        raise ValueError(f"scheme={config['scheme']!r}; allowed: {', '.join(UNIFORM)}, mixed.")
    if config["scheme"] == "mixed" and config.get("budget_bits") not in (4, 5, 6, 7, 8):
        raise ValueError(f"budget_bits={config.get('budget_bits')!r}; allowed: 4..8.")
    common.check_train_config(hawq.main_job_overrides(config))


def fliqs_trial(config: dict[str, Any], trial: studies.Trial) -> dict[str, Any]:
    """One (seed, scheme[, budget]): formats per layer, PTQ and QAT fine-tune; its BOPs."""
    from archjax.quant import IntFormat, QuantRule, mixed, report

    base = hawq.base_model(config, trial)
    cfg, model, variables, traces, (train_ds, _) = base
    fmts = formats()
    table = mixed.sensitivities(
        variables["params"], traces, list(fmts.values()), weight=hawq.KERNELS
    )
    macs = {
        layer.path: layer.macs for layer in report(model, [], (1, *train_ds.image_shape)).layers
    }
    bops = table.bops(macs, activation_bits=8)
    int8 = IntFormat(bits=8)
    if config["scheme"] == "mixed":
        budget = sum(macs[n] for n in table.layers) * config["budget_bits"] * 8
        plan = mixed.allocate(table, budget, cost=bops)
        rules = mixed.to_quant_rules(plan, activation=int8)
        cost, sensitivity = plan.cost, plan.sensitivity
        per_layer = [c.candidate.name for c in plan.choices]
        extra = {"budget_bops": budget}
    else:
        j = list(fmts).index(config["scheme"])
        fmt = fmts[config["scheme"]]
        rules = [QuantRule(pattern=f"^{n}$", weight=fmt, activation=int8) for n in table.layers]
        cost, sensitivity = float(bops[:, j].sum()), float(table.sensitivity[:, j].sum())
        per_layer = [fmt.name] * len(table.layers)
        extra = {}
    # Same rules, same cost: the cost report agrees with the allocator's BOPs.
    assert np.isclose(report(model, rules, (1, *train_ds.image_shape)).bops, cost)
    metrics = hawq.finetune_trial(config, trial, rules, base)
    counts = {name: per_layer.count(name) for name in sorted(set(per_layer))}
    return {**metrics, "bops": cost, "sensitivity": sensitivity, "formats": str(counts), **extra}


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("no COMPLETE trials to fit; run the study first.")

    def summary(group):
        out = {"seeds": len(group), "bops": float(np.mean([r["bops"] for r in group]))}
        for m in ("test_accuracy", "ptq_accuracy"):
            out[m] = float(np.mean([r[m] for r in group]))
            out[f"{m}_std"] = float(np.std([r[m] for r in group]))
        return out

    uniform = {
        s: summary([r for r in done if r["scheme"] == s])
        for s in UNIFORM
        if any(r["scheme"] == s for r in done)
    }
    budgets = []
    for b in sorted({r["budget_bits"] for r in done if r["scheme"] == "mixed"}):
        group = [r for r in done if r["scheme"] == "mixed" and r["budget_bits"] == b]
        entry = {"budget_bits": b, **summary(group), "formats": [r["formats"] for r in group]}
        # A uniform format competes at this budget if its BOPs fit in it.
        limit = group[0]["budget_bops"]
        fitting = {s: u for s, u in uniform.items() if u["bops"] <= limit}
        for m in ("test_accuracy", "ptq_accuracy"):
            if fitting:
                best = max(fitting, key=lambda s, m=m: fitting[s][m])
                entry[f"best_uniform_{m}"] = best
                entry[f"mixed_minus_best_uniform_{m}"] = entry[m] - fitting[best][m]
                seeds = {r["seed"]: r[m] for r in done if r["scheme"] == best}
                d = [r[m] - seeds[r["seed"]] for r in group if r["seed"] in seeds]
                entry[f"mixed_wins_{m}"] = f"{sum(x > 0 for x in d)}/{len(d)} (ties {d.count(0)})"
        budgets.append(entry)
    return {"uniform": uniform, "mixed": budgets}


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return _table(rows)


def plot(rows, curves, outdir: str) -> list[str]:
    t = _table(rows)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (s, u) in enumerate(t["uniform"].items()):
        ax.errorbar(
            [u["bops"]],
            [u["test_accuracy"]],
            yerr=[u["test_accuracy_std"]],
            marker="o",
            ls="none",
            color=f"C{i}",
            capsize=2,
            label=f"uniform {s}",
        )
    if t["mixed"]:
        ax.errorbar(
            [e["bops"] for e in t["mixed"]],
            [e["test_accuracy"] for e in t["mixed"]],
            yerr=[e["test_accuracy_std"] for e in t["mixed"]],
            marker="s",
            color="k",
            capsize=2,
            label="mixed int/fp (budget = uniform 4/6/8 bits)",
        )
    ax.set(
        xscale="log",
        xlabel="BOPs (weight bits x activation bits x MACs)",
        ylabel="test accuracy after QAT fine-tune",
        title="mixed int/fp vs uniform formats",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(outdir, exist_ok=True)
    path = f"{outdir}/accuracy_vs_bops.png"
    fig.savefig(path, dpi=120)
    return [path]


def define(quick: bool = False) -> studies.Study:
    # Seed by seed, the 4-bit points first: a run cut short still has paired comparisons.
    order = [("int4", None), ("mixed", 4)]
    if not quick:
        order = [("int4", None), ("fp4", None), ("mixed", 4), ("mixed", 6), ("int8", None),
                 ("fp8", None), ("mixed", 8)]  # fmt: skip
    configs = [
        {"scheme": s, "seed": seed, **({"budget_bits": b} if b else {})}
        for seed in ([0] if quick else [0, 1, 2])
        for s, b in order
    ]
    return studies.Study(
        name="fliqs" + ("_quick" if quick else ""),
        configs=configs,
        trial=fliqs_trial,
        check=check,
        setup=common.setup,
        fixed=hawq.fixed_settings(quick),
        objective="test_accuracy",
        direction="maximize",
        fit=fit,
        plot=plot,
    )
