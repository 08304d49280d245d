r"""ZeroQ / layer-wise calibration: W4A4 and W4A8 PTQ calibrated on real vs distilled data.

  python -m archjax.studies run experiments/studies/zeroq.py --quick
  python -m archjax.studies fit experiments/studies/zeroq.py --quick
  python -m archjax.studies plot experiments/studies/zeroq.py --quick

Claims: ZeroQ (Cai et al., 2020) calibrates PTQ on a batch distilled to "match the
statistics of batch normalization across different layers of the network"; Hubara et
al. ("Layer-wise Calibration and Integer Programming") report "less than 1\% accuracy
degradation --- with 4-bit weights and activations in all layers, but the smallest two".

Each trial (one seed) trains a float ResNet-8 (BatchNorm, CIFAR stem) on 8x8 digits,
then runs PTQ (per-channel absmax weights, static asymmetric per-tensor activation
ranges, BatchNorm in float) with three calibration batches of the same size: real
train images, a ZeroQ batch (:func:`archjax.quant.distill_calibration_data`) and plain
N(0, 1) noise (the control). Schemes: W4A8 and W4A4 with the first and last layer
(the smallest two) at W8A8, and W4A4 in every layer. Per-layer sensitivity: W4A4 in
one layer at a time (real calibration), the accuracy drop against float.
"""

from __future__ import annotations

import numpy as np

from archjax import models, studies
from archjax.quant import (
    IntFormat,
    QuantRule,
    batchnorm_gaps,
    calibrate_model,
    distill_calibration_data,
    first_last_rules,
    quantize_model,
    report,
)
from experiments.studies import quant_train

INT8, INT4 = IntFormat(bits=8), IntFormat(bits=4)
# Activations: asymmetric ranges, so post-ReLU inputs use every level (as ZeroQ's min/max).
A8, A4 = IntFormat(bits=8, symmetric=False), IntFormat(bits=4, symmetric=False)


def _edges_w8a8(body_activation) -> list[QuantRule]:
    """First (stem) and last (head) layer, the smallest two, at W8A8; the rest W4."""
    edges = first_last_rules(INT8, INT4)[:2]  # their patterns; formats set below
    edge = [QuantRule(pattern=r.pattern, weight=INT8, activation=A8) for r in edges]
    return [*edge, QuantRule(pattern=".*", weight=INT4, activation=body_activation)]


SCHEMES = {
    "w4a8": _edges_w8a8(A8),
    "w4a4": _edges_w8a8(A4),
    "w4a4_all": [QuantRule(pattern=".*", weight=INT4, activation=A4)],
}
CALIBRATIONS = ("real", "distilled", "noise")


def _model(config):
    return models.create(
        "resnet8", num_classes=10, stem="cifar", width_multiplier=config["width_multiplier"]
    )


def _ptq(qmodel, variables, batch, x, y) -> float:
    return quant_train.accuracy(qmodel, calibrate_model(qmodel, variables, [batch]), x, y)


def run_trial(config, trial):
    """Float model, then PTQ per scheme and calibration source, then per-layer sensitivity."""
    xtr, ytr, xte, yte = quant_train.digits(8)
    model = _model(config)
    variables = quant_train.train(model, xtr, ytr, steps=config["train_steps"], seed=config["seed"])
    n = config["calibration_size"]
    rng = np.random.default_rng(config["seed"])
    shape = (n, *xtr.shape[1:])
    distill = {"steps": config["distill_steps"], "seed": config["seed"]}
    batches = {
        "real": xtr[rng.choice(len(xtr), n, replace=False)],
        "distilled": np.asarray(distill_calibration_data(model, variables, shape, **distill)),
        "noise": rng.standard_normal(shape).astype(np.float32),
    }
    out = {"float": quant_train.accuracy(model, variables, xte, yte)}
    for name, batch in batches.items():
        gaps = batchnorm_gaps(model, variables, batch)
        out[f"bn_gap/{name}"] = float(np.mean([max(g.values()) for g in gaps.values()]))
    for scheme in config["schemes"]:
        qmodel = quantize_model(model, SCHEMES[scheme])  # one model: its programs compile once
        for name in CALIBRATIONS:
            out[f"{scheme}/{name}"] = _ptq(qmodel, variables, batches[name], xte, yte)
    layers = report(model, [], (1, *xtr.shape[1:])).layers
    for layer in layers[: config["sensitivity_layers"] or len(layers)]:
        rules = [QuantRule(pattern=f"^{layer.path}$", weight=INT4, activation=A4)]
        acc = _ptq(quantize_model(model, rules), variables, batches["real"], xte, yte)
        out[f"layer_drop/{layer.path}"] = out["float"] - acc
        out[f"layer_params/{layer.path}"] = layer.params
    return out


def _means(rows) -> dict[str, float]:
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("no COMPLETE trial to fit (see `status`)")
    keys = [k for k in done[0] if k == "float" or "/" in k]
    return {k: float(np.mean([r[k] for r in done])) for k in keys}, len(done)


def fit(rows):
    mean, seeds = _means(rows)
    out = {"seeds": seeds, "float": mean["float"]}
    for scheme in [s for s in SCHEMES if f"{s}/real" in mean]:
        for name in CALIBRATIONS:
            out[f"{scheme}/{name}"] = mean[f"{scheme}/{name}"]
            out[f"drop/{scheme}/{name}"] = mean["float"] - mean[f"{scheme}/{name}"]
    out.update({k: v for k, v in mean.items() if k.startswith("bn_gap/")})
    drops = {k.split("/", 1)[1]: v for k, v in mean.items() if k.startswith("layer_drop/")}
    ranked = sorted(drops, key=drops.get, reverse=True)
    out["layers_by_drop"] = [
        {"layer": p, "drop": drops[p], "params": int(mean[f"layer_params/{p}"])} for p in ranked
    ]
    return out


def plot(rows, curves, outdir):
    mean, _ = _means(rows)
    groups = {
        s: {c: mean[f"{s}/{c}"] for c in CALIBRATIONS} for s in SCHEMES if f"{s}/real" in mean
    }
    groups["float"] = {c: mean["float"] for c in CALIBRATIONS}
    paths = [
        quant_train.bar_plot(
            groups, f"{outdir}/zeroq_ptq.png", ylabel="test accuracy", title="PTQ calibration data"
        )
    ]
    drops = {k.split("/", 1)[1]: v for k, v in mean.items() if k.startswith("layer_drop/")}
    layer = {p: {"W4A4 in this layer only": d} for p, d in drops.items()}
    paths.append(
        quant_train.bar_plot(
            layer, f"{outdir}/zeroq_layers.png", ylabel="accuracy drop", title="per-layer W4A4"
        )
    )
    return paths


def define(quick: bool = False) -> studies.Study:
    return studies.Study(
        name="zeroq" + ("_quick" if quick else ""),
        configs=studies.grid(seed=[0] if quick else [0, 1, 2]),
        trial=run_trial,
        fixed={
            "width_multiplier": 0.25,
            "schemes": ["w4a4"] if quick else list(SCHEMES),
            "train_steps": 40 if quick else 300,
            "calibration_size": 64,
            "distill_steps": 20 if quick else 200,
            "sensitivity_layers": 1 if quick else 0,  # 0: every layer
        },
        objective="w4a4/distilled",
        direction="maximize",
        fit=fit,
        plot=plot,
    )
