r"""FP8 exponent bits vs INT8 (Kuzmin et al., "FP8 Quantization: The Power of the Exponent").

  python -m archjax.studies run experiments/studies/fp8.py --quick
  python -m archjax.studies fit experiments/studies/fp8.py --quick
  python -m archjax.studies plot experiments/studies/fp8.py --quick

Claims: for PTQ "the choice of the number of exponent bits is driven by the severity of
outliers in the network"; with QAT "the difference in formats disappears".

Each trial (model, seed) trains a float model on 8x8 digits: a ResNet-8 with
BatchNorm (CNN, mild activations) or a small ViT (LayerNorm transformer, the kind of
network whose activations carry outliers). It measures the outlier severity of every
layer input (kurtosis and max|x - mean| / std, on a test batch), then quantizes the
weights (per output channel) and the inputs of every conv/dense/attention product
(per tensor) with 8-bit floats of 1..5 exponent bits (``e{E}m{7-E}``, no inf/NaN
codes, saturating) and with INT8 (symmetric, like the float formats): PTQ with static
ranges calibrated by the MSE search on real train images, then QAT (fine-tuning the
float model with the same fake quantizer, identity STE, then the same calibration).
The per-tensor scale is the paper's flexible per-tensor bias (``scale = range /
max_value``, a real number, so ``2**-bias`` can take any value); the paper's learned
exponent bits are not reproduced (archjax has fixed formats).
"""

from __future__ import annotations

import numpy as np

from archjax import models, studies
from archjax.quant import (
    FloatFormat,
    IntFormat,
    QuantRule,
    calibrate_model,
    quantize_model,
)
from archjax.quant.intercept import intercept
from experiments.studies import quant_train

FORMATS = {
    **{
        f"e{e}m{7 - e}": FloatFormat(e, 7 - e, finite_only=True, has_nan=False) for e in range(1, 6)
    },
    "int8": IntFormat(bits=8),
}


def _rules(fmt) -> list[QuantRule]:
    return [
        QuantRule(
            pattern=".*",
            weight=fmt,
            activation=fmt,
            weight_calibration="mse",
            activation_calibration="mse",
        )
    ]


def _model(config):
    if config["model"] == "resnet8":
        return models.create("resnet8", num_classes=10, stem="cifar", width_multiplier=0.25)
    return models.create(
        "vit_tiny_patch16_224",
        num_classes=10,
        image_size=8,
        patch_size=2,
        depth=config["vit_depth"],
        embed_dim=32,
        num_heads=2,
    )


def outlier_severity(model, variables, x) -> dict[str, dict[str, float]]:
    """Kurtosis and max|x - mean| / std of each layer input (activations only), by op name."""
    seen = {}

    def record(op):
        sides = op.operands if op.kind in ("einsum", "matmul") else op.operands[:1]
        for i, t in enumerate(sides):
            a = np.asarray(t, np.float64).ravel()
            mu, sd = a.mean(), a.std() + 1e-12
            seen[f"{op.name}:{i}"] = {
                "kurtosis": float(np.mean((a - mu) ** 4) / sd**4),
                "max_over_std": float(np.max(np.abs(a - mu)) / sd),
            }
        return op.call(*op.operands)

    with intercept(record):
        model.apply(variables, x, train=False)
    return seen


def run_trial(config, trial):
    """Float model, outlier severity, then PTQ and QAT with each format."""
    xtr, ytr, xte, yte = quant_train.digits(8)
    model = _model(config)
    seed = config["seed"]
    variables = quant_train.train(model, xtr, ytr, steps=config["train_steps"], seed=seed)
    severity = outlier_severity(model, variables, xte[:128])
    xte, yte = xte[: config.get("test_size")], yte[: config.get("test_size")]
    out = {"float": quant_train.accuracy(model, variables, xte, yte)}
    out["kurtosis_max"] = max(s["kurtosis"] for s in severity.values())
    out["kurtosis_mean"] = float(np.mean([s["kurtosis"] for s in severity.values()]))
    out["max_over_std_max"] = max(s["max_over_std"] for s in severity.values())
    rng = np.random.default_rng(seed)
    size, count = config.get("calibration_size", 128), config.get("calibration_batches", 2)
    calib = [xtr[rng.choice(len(xtr), size, replace=False)] for _ in range(count)]
    for name in config["formats"]:
        fmt = FORMATS[name]
        qmodel = quantize_model(model, _rules(fmt))
        qvars = calibrate_model(qmodel, variables, calib)
        out[f"ptq/{name}"] = quant_train.accuracy(qmodel, qvars, xte, yte)
        tuned = quant_train.train(
            qmodel,
            xtr,
            ytr,
            steps=config["qat_steps"],
            seed=seed,
            learning_rate=config["qat_learning_rate"],
            init=variables,
        )
        out[f"qat/{name}"] = quant_train.accuracy(
            qmodel, calibrate_model(qmodel, tuned, calib), xte, yte
        )
    return out


def _means(rows):
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("no COMPLETE trial to fit (see `status`)")
    by_model: dict[str, list] = {}
    for r in done:
        by_model.setdefault(r["model"], []).append(r)
    keys = ["float", "kurtosis_max", "kurtosis_mean", "max_over_std_max"]
    names = [n for n in FORMATS if f"ptq/{n}" in done[0]]
    keys += [f"{p}/{n}" for p in ("ptq", "qat") for n in names]
    return {
        m: {k: float(np.mean([r[k] for r in rs])) for k in keys} | {"seeds": len(rs)}
        for m, rs in by_model.items()
    }


def fit(rows):
    out = _means(rows)
    for m in out.values():
        names = [n for n in FORMATS if f"ptq/{n}" in m]
        floats = [n for n in names if n != "int8"]
        for phase in ("ptq", "qat"):
            best = max(floats, key=lambda n, p=phase: m[f"{p}/{n}"])
            m[f"{phase}_best_fp8"] = best
            m[f"{phase}_best_fp8_minus_int8"] = m[f"{phase}/{best}"] - m[f"{phase}/int8"]
            accs = [m[f"{phase}/{n}"] for n in names]
            m[f"{phase}_spread"] = max(accs) - min(accs)
    return out


def plot(rows, curves, outdir):
    means = _means(rows)
    paths = []
    for phase in ("ptq", "qat"):
        groups = {
            f"{m} (kurt {v['kurtosis_max']:.0f})": {
                n: v[f"{phase}/{n}"] for n in FORMATS if f"{phase}/{n}" in v
            }
            for m, v in means.items()
        }
        paths.append(
            quant_train.bar_plot(
                groups, f"{outdir}/fp8_{phase}.png", ylabel="test accuracy", title=phase.upper()
            )
        )
    return paths


def define(quick: bool = False) -> studies.Study:
    # Quick mode only: one small calibration batch and 128 test images (the MSE search
    # over every activation, run by each quantized forward pass, is most of a quick
    # trial's run time); the full study calibrates on 2 x 128 images, tests on all 359.
    small = {"calibration_size": 32, "calibration_batches": 1, "test_size": 128}
    small = small if quick else {}
    return studies.Study(
        name="fp8" + ("_quick" if quick else ""),
        # Quick mode: the ViT alone; its conv (patch embedding), dense and attention
        # einsums take every path of the trial that the ResNet's conv and dense take.
        configs=studies.grid(
            seed=[0] if quick else [0, 1, 2], model=["vit"] if quick else ["resnet8", "vit"]
        ),
        trial=run_trial,
        fixed={
            "train_steps": 10 if quick else 300,
            "qat_steps": 2 if quick else 60,
            "qat_learning_rate": 3e-4,
            "vit_depth": 1 if quick else 2,
            "formats": ["e4m3", "int8"] if quick else list(FORMATS),  # has the objective
            **small,
        },
        objective="ptq/e4m3",
        direction="maximize",
        fit=fit,
        plot=plot,
    )
