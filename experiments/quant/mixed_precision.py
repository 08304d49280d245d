r"""Hessian-aware mixed precision (HAWQ-V2) vs uniform weight bits at equal size, on digits.

  python -m experiments.quant.mixed_precision
  python -m experiments.quant.mixed_precision --config.quant.budgets=8,4,3 --workdir=runs/mp

Uses ``archjax.quant`` (formats, rules, transform, ``mixed``), ``archjax.analysis`` and
``experiments/quant/common.py``. Steps:

1. train (or reuse) the main job's float ResNet-20 in ``<workdir>/float``;
2. Hutchinson traces of each conv/dense kernel's Hessian block, full-data estimate
   over ``quant.hessian_batches`` train batches;
3. HAWQ-V2 sensitivities for ``IntFormat`` weight candidates (per-channel absmax);
4. for each budget (average weight bits x all weights): the uniform model and the
   mixed model chosen by ``allocate`` (exact integer program) at the same size;
5. post-training quantization of the weights only (activations stay float, so that
   the comparison is about weight bits) and test accuracy of each.

Writes ``<workdir>/mixed_precision.json``, ``<workdir>/pareto.png`` (test accuracy
vs weight bits) and prints a markdown table for docs/reproductions.md.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from archjax import analysis, data
from archjax.quant import IntFormat, QuantRule, calibrate_model, mixed, quantize_model
from experiments import config_utils
from experiments import train as main_job
from experiments.configs import default
from experiments.quant import common

KERNELS = r"(^|/)kernel$"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The main job's config plus a ``quant`` block (no declared ``arg``)."""
    config_utils.parse_arg(arg)
    c = default.get_config()
    c.quant = ml_collections.ConfigDict()
    c.quant.candidates = "2,3,4,6,8"  # weight bits a layer may get (IntFormat, per channel)
    c.quant.budgets = "8,6,4,3,2"  # average weight bits of the size budgets (uniform models too)
    c.quant.hessian_batches = 4  # un-augmented train batches of the full-data trace
    c.quant.hutchinson_probes = 64
    c.quant.calibration_batches = 4
    return c


def _bits(spec: str, name: str) -> list[int]:
    try:
        values = [int(b) for b in spec.split(",") if b]
    except ValueError:
        raise ValueError(f"quant.{name}={spec!r}: expected comma-separated integers.") from None
    if not values or any(not 2 <= b <= 16 for b in values):
        raise ValueError(f"quant.{name}={spec!r}: bits must be integers in [2, 16].")
    return values


def _hessian_batches(base, train_ds, n: int):
    batches = []
    for batch in data.eval_batches(train_ds, batch_size=base.batch_size):
        if len(batches) == n:
            break
        if np.all(batch["mask"] == 1):
            batches.append({"image": batch["image"], "label": batch["label"]})
    return analysis.stack_batches(batches)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Float main job, traces, allocations and PTQ; returns the rows of the table."""
    candidates = _bits(config.quant.candidates, "candidates")
    budgets = _bits(config.quant.budgets, "budgets")
    if min(budgets) < min(candidates):
        raise ValueError(f"quant.budgets {budgets} go below the smallest candidate {candidates}.")
    base = common.base_config(config)
    float_dir = os.path.join(workdir, "float")
    main_job.train_and_evaluate(base, float_dir)
    train_ds, test_ds = common.datasets(base)
    model = common.model_for(base, train_ds)
    variables = common.final_variables(base, float_dir, model)
    calib = common.train_batches(base, train_ds, config.quant.calibration_batches)

    loss_fn = analysis.classifier_loss(model, variables)
    hdata = _hessian_batches(base, train_ds, config.quant.hessian_batches)
    est = analysis.hutchinson_trace(
        loss_fn,
        variables["params"],
        hdata,
        key=jax.random.key(config.seed),
        num_probes=config.quant.hutchinson_probes,
        subset=KERNELS,
        stacked=True,
    )
    table = mixed.sensitivities(
        variables["params"], est, [IntFormat(bits=b) for b in candidates], weight=KERNELS
    )
    total = int(table.num_params.sum())

    def accuracy(rules) -> float:
        qmodel = quantize_model(model, rules)
        qvars = calibrate_model(qmodel, variables, calib)
        return common.evaluate(base, qmodel, qvars, test_ds)["accuracy"]

    rows = [
        {
            "scheme": "float",
            "avg_bits": 32.0,
            "weight_bits": 32 * total,
            "sensitivity": 0.0,
            "test_accuracy": common.evaluate(base, model, variables, test_ds)["accuracy"],
        }
    ]
    for b in budgets:
        budget = b * total
        uniform = [
            QuantRule(pattern=f"^{name}$", weight=IntFormat(bits=b)) for name in table.layers
        ]
        rows.append(
            {
                "scheme": f"uniform int{b}",
                "avg_bits": float(b),
                "weight_bits": budget,
                "sensitivity": _uniform_sensitivity(table, b),
                "test_accuracy": accuracy(uniform),
            }
        )
        plan = mixed.allocate(table, budget)
        rows.append(
            {
                "scheme": f"mixed <= {b} bits",
                "avg_bits": plan.cost / total,
                "weight_bits": plan.cost,
                "sensitivity": plan.sensitivity,
                "test_accuracy": accuracy(mixed.to_quant_rules(plan)),
                "bits_per_layer": {c.path: c.candidate.bits for c in plan.choices},
            }
        )
    result = {
        "trace": est.trace,
        "trace_stderr": est.stderr,
        "mean_trace_per_layer": {k: est.per_layer[k] / est.num_params[k] for k in est.per_layer},
        "rows": rows,
    }
    with open(os.path.join(workdir, "mixed_precision.json"), "w") as f:
        json.dump(result, f, indent=1)
    _plot(rows, os.path.join(workdir, "pareto.png"))
    return result


def _uniform_sensitivity(table: mixed.SensitivityTable, bits: int) -> float | None:
    cols = [j for j, c in enumerate(table.candidates) if c.bits == bits]
    return float(table.sensitivity[:, cols[0]].sum()) if cols else None


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("uniform", "o"), ("mixed", "s")):
        pts = sorted(
            (r["weight_bits"], r["test_accuracy"]) for r in rows if r["scheme"].startswith(kind)
        )
        ax.plot([p[0] / 8e3 for p in pts], [p[1] for p in pts], marker=marker, label=kind)
    flt = next(r for r in rows if r["scheme"] == "float")
    ax.axhline(flt["test_accuracy"], color="gray", ls="--", label="float32")
    ax.set(
        xlabel="weight storage (kB)",
        ylabel="test accuracy",
        xscale="log",
        title="ResNet-20, digits, weight-only PTQ: uniform vs HAWQ-V2",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cli() -> None:
    """Entry point of ``python -m experiments.quant.mixed_precision``."""
    config_flag = config_utils.define_config_flag(get_config(), "Config.")
    workdir_flag = flags.DEFINE_string("workdir", "runs/mixed_precision", "Output directory.")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)
        config = config_utils.checked_config(config_flag, reference=get_config())
        result = train_and_evaluate(config, workdir_flag.value)
        print(
            f"Hessian trace of the kernels: {result['trace']:.3f} +- {result['trace_stderr']:.3f}"
        )
        print("| scheme | avg weight bits | weight kB | sensitivity | test accuracy |")
        print("|---|---|---|---|---|")
        for r in result["rows"]:
            sens = "-" if r["sensitivity"] is None else f"{r['sensitivity']:.3e}"
            print(
                f"| {r['scheme']} | {r['avg_bits']:.2f} | {r['weight_bits'] / 8e3:.1f} | "
                f"{sens} | {r['test_accuracy']:.4f} |"
            )

    app.run(main, argv=sys.argv, flags_parser=config_utils.parse_flags)


if __name__ == "__main__":
    cli()
