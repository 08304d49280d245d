r"""Binary networks: BWN and XNOR against float, with the identity, clipped and rectified STE.

  python -m archjax.studies run experiments/studies/binary.py --quick
  python -m archjax.studies fit experiments/studies/binary.py --quick
  python -m archjax.studies plot experiments/studies/binary.py --quick

Claims: XNOR-Net (Rastegari et al., 2016): in Binary-Weight-Networks "the filters are
approximated with binary values resulting in 32x memory saving"; XNOR-Networks
binarize the filters and the inputs of the convolutions too (so float > BWN > XNOR in
accuracy). ReSTE (Wu et al., 2023): the rectified STE trains better than the STE.

The network is XNOR-Net's block order, ``BN -> binarize -> conv -> pool``, with a float
first and last layer as in the paper; the float baseline has ``hardtanh`` where the
binary nets take the sign (``sign(hardtanh(x)) == sign(x)``), so the three variants
share one architecture. Weights: ``sign(w) * mean|w|`` per output channel (BWN);
activations: ``sign(x) * mean|x|`` per tensor, from the current batch (XNOR-Net's
``K`` is per spatial position: archjax has per-tensor and per-channel scales). Each
configuration trains from scratch on 8x8 digits with Adam. The memory saving comes
from :func:`archjax.quant.report` (1-bit vs 32-bit weights), also counting the float
per-channel scales that the report leaves out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from archjax import studies
from archjax.quant import BinaryFormat, QuantRule, quantize_model, report
from experiments.studies import quant_train

BINARY = BinaryFormat()
BODY = r"^conv\d"  # the binarized convolutions; "stem" and "head" stay float
VARIANTS = {
    "float": [],
    "bwn": [QuantRule(pattern=BODY, weight=BINARY)],
    "xnor": [QuantRule(pattern=BODY, weight=BINARY, activation=BINARY)],
}


class XnorNet(nn.Module):
    """Float stem conv, then ``BN -> hardtanh -> conv -> max-pool`` blocks, then a float head."""

    widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False, name="stem")(x)
        for i, w in enumerate(self.widths[1:]):
            x = nn.BatchNorm(use_running_average=not train, name=f"bn{i}")(x)
            x = jnp.clip(x, -1.0, 1.0)  # the binary nets binarize this input: sign(x)
            x = nn.Conv(w, (3, 3), use_bias=False, name=f"conv{i}")(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn_head")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def _rules(config) -> list[QuantRule]:
    return [dataclasses.replace(r, ste=config["ste"]) for r in VARIANTS[config["variant"]]]


def run_trial(config, trial):
    """Trains one variant from scratch; test accuracy and the weight memory of the binary convs."""
    xtr, ytr, xte, yte = quant_train.digits(8)
    base = XnorNet(widths=tuple(config["widths"]))
    rules = _rules(config)
    model = quantize_model(base, rules) if rules else base
    variables = quant_train.train(
        model, xtr, ytr, steps=config["train_steps"], seed=config["seed"], learning_rate=3e-3
    )
    out = {"test_accuracy": quant_train.accuracy(model, variables, xte, yte)}
    # Memory of the convolutions that BWN/XNOR binarize, float vs 1-bit (cost report).
    shape = (1, *xtr.shape[1:])
    body = [QuantRule(pattern=BODY, weight=BINARY)]
    binary = [r for r in report(base, body, shape).layers if r.weight_bits == 1]
    floats = {r.path: r for r in report(base, [], shape).layers}
    float_bytes = sum(floats[r.path].bytes for r in binary)
    out["binarized_params"] = sum(r.params for r in binary)
    out["memory_saving"] = float_bytes / sum(r.bytes for r in binary)
    scales = sum(variables["params"][r.path]["kernel"].shape[-1] for r in binary) * 4.0
    out["memory_saving_with_scales"] = float_bytes / (sum(r.bytes for r in binary) + scales)
    full = report(base, body if config["variant"] != "float" else [], shape)
    out["model_bytes"] = full.size_bytes
    return out


def _table(rows) -> dict[str, list[float]]:
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError("no COMPLETE trial to fit (see `status`)")
    table: dict[str, list[float]] = {}
    for r in done:
        name = "float" if r["variant"] == "float" else f"{r['variant']}/{r['ste']}"
        table.setdefault(name, []).append(r["test_accuracy"])
    return table, done


def fit(rows):
    table, done = _table(rows)
    out = {
        name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
        for name, v in table.items()
    }
    mean = {k: v["mean"] for k, v in out.items()}
    best = lambda variant: max((v, k) for k, v in mean.items() if k.startswith(variant + "/"))
    if "float" in mean and all(any(k.startswith(v + "/") for k in mean) for v in ("bwn", "xnor")):
        (bwn, bwn_k), (xnor, xnor_k) = best("bwn"), best("xnor")
        out["order_float>bwn>xnor"] = bool(mean["float"] > bwn > xnor)
        out["best"] = {"bwn": bwn_k, "xnor": xnor_k}
    out["memory_saving"] = float(done[0]["memory_saving"])
    out["memory_saving_with_scales"] = float(done[0]["memory_saving_with_scales"])
    out["model_bytes"] = {
        ("float" if r["variant"] == "float" else "binary"): r["model_bytes"] for r in done
    }
    return out


def plot(rows, curves, outdir):
    table, _ = _table(rows)
    groups: dict[str, dict[str, float]] = {}
    for name, v in table.items():
        variant, _, ste = name.partition("/")
        groups.setdefault(variant, {})[ste or "float"] = float(np.mean(v))
    path = f"{outdir}/binary_accuracy.png"
    return [quant_train.bar_plot(groups, path, ylabel="test accuracy", title="BWN / XNOR vs float")]


def define(quick: bool = False) -> studies.Study:
    seeds = [0] if quick else [0, 1, 2]
    stes = ["clipped", "reste"] if quick else ["identity", "clipped", "reste"]
    configs = studies.grid(variant=["float"], ste=["identity"], seed=seeds)
    configs += studies.grid(variant=["bwn", "xnor"], ste=stes, seed=seeds)
    if quick:
        configs = [c for c in configs if (c["variant"], c["ste"]) != ("bwn", "clipped")]
    return studies.Study(
        name="binary" + ("_quick" if quick else ""),
        configs=configs,
        trial=run_trial,
        fixed={
            "widths": [8, 16, 16] if quick else [16, 64, 128],
            "train_steps": 15 if quick else 400,
        },
        objective="test_accuracy",
        direction="maximize",
        fit=fit,
        plot=plot,
    )
