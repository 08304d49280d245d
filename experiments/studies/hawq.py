r"""HAWQ-V2 mixed precision vs uniform weight bits at equal size (Dong et al., 2020), on digits.

  python -m archjax.studies run experiments/studies/hawq.py [--quick]
  python -m archjax.studies fit experiments/studies/hawq.py [--quick]
  python -m archjax.studies plot experiments/studies/hawq.py [--quick]

Per seed, once (shared by that seed's trials, under a file lock): the main job trains the
float model in ``quant_float_bases/seed<s>_<settings hash>`` next to the study's workdir
(shared with experiments/studies/fliqs.py) and Hutchinson estimates each conv/dense
kernel's Hessian trace (full-data, ``hessian_batches`` un-augmented train batches). Each
trial then quantizes the weights (activations stay float, so only weight bits differ) at
the size of uniform ``bits``-bit weights: ``uniform`` with every layer at ``bits``,
``mixed`` with the layers' bits from ``archjax.quant.mixed.allocate`` (HAWQ-V2
sensitivities ``tr(H_l)/n_l ||Q(W_l) - W_l||^2``, exact integer program) over the
``candidates``. It records the PTQ accuracy, then fine-tunes the quantized model with the
main job (QAT from the float weights, ``finetune_steps`` steps) and records that.
:func:`finetune_trial` is shared with experiments/studies/fliqs.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from archjax import studies
from experiments.studies import common

KERNELS = r"(^|/)kernel$"
# Trial keys that are not main-job overrides.
STUDY_KEYS = (
    "scheme",
    "bits",
    "budget_bits",
    "candidates",
    "base_steps",
    "finetune_steps",
    "finetune_lr",
    "hessian_batches",
    "hutchinson_probes",
)
SCHEMES = ("uniform", "mixed")


def main_job_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """The base (float) run's overrides of the main job's config."""
    return {k: v for k, v in config.items() if k not in STUDY_KEYS}


def check(config: dict[str, Any]) -> None:
    if config["scheme"] not in SCHEMES:
        raise ValueError(f"scheme={config['scheme']!r}; allowed: {', '.join(SCHEMES)}.")
    if config["bits"] not in config["candidates"]:
        raise ValueError(f"bits={config['bits']} is not a candidate {config['candidates']}.")
    common.check_train_config(main_job_overrides(config))


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on ``path`` (one machine: the base run is made once per seed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def bases_dir(trial: studies.Trial) -> str:
    """``quant_float_bases/`` next to the study's workdir: hawq and fliqs studies run side by
    side share a base run whose settings match."""
    study_dir = os.path.dirname(os.path.dirname(trial.workdir))
    return os.path.join(os.path.dirname(os.path.abspath(study_dir)), "quant_float_bases")


def _base_key(config: dict[str, Any]) -> str:
    """A directory name for the base run's settings (seed included)."""
    keys = ("base_steps", "hessian_batches", "hutchinson_probes")
    settings = {**main_job_overrides(config), **{k: config[k] for k in keys}}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"seed{config['seed']}_{digest}"


def base_model(config: dict[str, Any], trial: studies.Trial):
    """The seed's trained float model and kernel traces (made once, then read back, under a
    file lock, in :func:`bases_dir`).

    Returns ``(cfg, model, variables, traces, datasets)``.
    """
    import jax

    from archjax import analysis
    from experiments import train as main_job
    from experiments.quant import common as quant_common

    base_dir = os.path.join(bases_dir(trial), _base_key(config))
    cfg = common.train_config({**main_job_overrides(config), "num_steps": config["base_steps"]})
    train_ds, test_ds = quant_common.datasets(cfg)
    model = quant_common.model_for(cfg, train_ds)
    traces_path = os.path.join(base_dir, "traces.json")
    with _locked(base_dir + ".lock"):
        if not os.path.exists(traces_path):
            main_job.train_and_evaluate(cfg, base_dir)
            variables = quant_common.final_variables(cfg, base_dir, model)
            batches = common.full_batches(
                train_ds, batch_size=cfg.batch_size, num_batches=config["hessian_batches"]
            )
            est = analysis.hutchinson_trace(
                analysis.classifier_loss(model, variables),
                variables["params"],
                analysis.stack_batches(batches),
                key=jax.random.key(config["seed"]),
                num_probes=config["hutchinson_probes"],
                subset=KERNELS,
                stacked=True,
            )
            with open(traces_path + ".tmp", "w") as f:
                json.dump({"per_layer": est.per_layer, "trace": est.trace}, f)
            os.replace(traces_path + ".tmp", traces_path)
    variables = quant_common.final_variables(cfg, base_dir, model)
    with open(traces_path) as f:
        traces = json.load(f)["per_layer"]
    return cfg, model, variables, traces, (train_ds, test_ds)


def finetune_trial(
    config: dict[str, Any], trial: studies.Trial, rules: list, base
) -> dict[str, Any]:
    """PTQ accuracy of ``rules`` on the base model, then QAT fine-tune from the float weights."""
    from archjax.quant import calibrate_model, quantize_model
    from experiments.quant import common as quant_common

    cfg, model, variables, _, (train_ds, test_ds) = base
    qmodel = quantize_model(model, rules)
    calib = quant_common.train_batches(cfg, train_ds, 2)
    ptq = quant_common.evaluate(cfg, qmodel, calibrate_model(qmodel, variables, calib), test_ds)
    steps = config["finetune_steps"]
    overrides = {
        **main_job_overrides(config),
        "num_steps": steps,
        "learning_rate": config["finetune_lr"],
        "warmup_steps": 0,
        "eval_every": steps,
        "checkpoint_every": steps,
    }
    metrics = common.train_trial(
        overrides,
        trial,
        wrap_model=lambda m: quantize_model(m, rules),
        init_variables=variables,
    )
    return {**metrics, "ptq_accuracy": ptq["accuracy"]}


def hawq_trial(config: dict[str, Any], trial: studies.Trial) -> dict[str, Any]:
    """One (seed, bits, scheme): allocation, PTQ and QAT fine-tune at the size budget."""
    from archjax.quant import IntFormat, QuantRule, mixed

    base = base_model(config, trial)
    _, _, variables, traces, _ = base
    candidates = [IntFormat(bits=b) for b in config["candidates"]]
    table = mixed.sensitivities(variables["params"], traces, candidates, weight=KERNELS)
    total = int(table.num_params.sum())
    bits = config["bits"]
    if config["scheme"] == "uniform":
        j = config["candidates"].index(bits)
        rules = [QuantRule(pattern=f"^{n}$", weight=candidates[j]) for n in table.layers]
        sensitivity, cost = float(table.sensitivity[:, j].sum()), float(bits * total)
        per_layer = {n: bits for n in table.layers}
    else:
        plan = mixed.allocate(table, bits * total)
        rules = mixed.to_quant_rules(plan)
        sensitivity, cost = plan.sensitivity, plan.cost
        per_layer = {c.path: c.candidate.bits for c in plan.choices}
    metrics = finetune_trial(config, trial, rules, base)
    return {
        **metrics,
        "avg_bits": cost / total,
        "weight_bits": cost,
        "sensitivity": sensitivity,
        "bits_per_layer": json.dumps(per_layer),
    }


def _table(rows, metrics=("ptq_accuracy", "test_accuracy")) -> list[dict[str, Any]]:
    """Per (bits, scheme): means and std over seeds of ``metrics`` and of the paired
    mixed - uniform difference."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("no COMPLETE trials to fit; run the study first.")
    out = []
    for bits in sorted({r["bits"] for r in done}, reverse=True):
        entry: dict[str, Any] = {"bits": bits}
        by = {
            s: {r["seed"]: r for r in done if r["bits"] == bits and r["scheme"] == s}
            for s in SCHEMES
        }
        for s in SCHEMES:
            for m in metrics:
                vals = [r[m] for r in by[s].values()]
                entry[f"{s}_{m}"] = float(np.mean(vals)) if vals else None
                entry[f"{s}_{m}_std"] = float(np.std(vals)) if vals else None
            entry[f"{s}_seeds"] = len(by[s])
        paired = sorted(set(by["uniform"]) & set(by["mixed"]))
        for m in metrics:
            d = [by["mixed"][s][m] - by["uniform"][s][m] for s in paired]
            entry[f"mixed_minus_uniform_{m}"] = float(np.mean(d)) if d else None
            entry[f"mixed_wins_{m}"] = f"{sum(x > 0 for x in d)}/{len(d)} (ties {d.count(0)})"
        out.append(entry)
    return out


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"by_budget": _table(rows)}


def plot(rows, curves, outdir: str) -> list[str]:
    table = _table(rows)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    x = [t["bits"] for t in table]
    for i, (s, m, ls) in enumerate(
        [(s, m, ls) for s in SCHEMES for m, ls in (("test_accuracy", "-"), ("ptq_accuracy", ":"))]
    ):
        y = [t[f"{s}_{m}"] for t in table]
        e = [t[f"{s}_{m}_std"] for t in table]
        label = f"{s}, {'QAT fine-tuned' if m == 'test_accuracy' else 'PTQ'}"
        ax.errorbar(
            x, y, yerr=e, ls=ls, marker="os"[i // 2], color=f"C{i // 2}", capsize=2, label=label
        )
    ax.set(
        xlabel="average weight bits (size budget)",
        ylabel="test accuracy (mean, std over seeds)",
        title="HAWQ-V2 mixed vs uniform weight bits",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = f"{outdir}/accuracy_vs_bits.png"
    os.makedirs(outdir, exist_ok=True)
    fig.savefig(path, dpi=120)
    return [path]


def fixed_settings(quick: bool) -> dict[str, Any]:
    """Main-job overrides and the base / fine-tune budgets shared with fliqs.py."""
    return {
        "model": "resnet8",
        "model_kwargs.width_multiplier": 0.5,
        "image_size": 8,
        "batch_size": 64,
        "eval_batch_size": 128 if quick else 256,
        "warmup_steps": 1 if quick else 10,
        "log_every": 2 if quick else 25,
        "eval_every": 1000,
        "checkpoint_every": 1000,
        "num_devices": 1,
        "base_steps": 3 if quick else 300,
        "finetune_steps": 2 if quick else 60,
        "finetune_lr": 0.01,
        "hessian_batches": 1 if quick else 4,
        "hutchinson_probes": 2 if quick else 32,
    }


def define(quick: bool = False) -> studies.Study:
    bits, seeds = ([4], [0]) if quick else ([3, 4, 6], [0, 1, 2])
    return studies.Study(
        name="hawq" + ("_quick" if quick else ""),
        configs=studies.grid(bits=bits, seed=seeds, scheme=list(SCHEMES)),
        trial=hawq_trial,
        check=check,
        setup=common.setup,
        fixed={**fixed_settings(quick), "candidates": [2, 3, 4, 6, 8]},
        objective="test_accuracy",
        direction="maximize",
        fit=fit,
        plot=plot,
    )
