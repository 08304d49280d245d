"""Pieces shared by the QAT and PTQ scripts: schemes, final state, static evaluation."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from archjax import data, models, parallel
from archjax.checkpoint import Checkpointer
from archjax.quant import (
    BinaryFormat,
    FloatFormat,
    IntFormat,
    QuantRule,
    TernaryFormat,
    first_last_rules,
)
from archjax.train import TrainState, abstract_train_state, jit_eval_step, make_eval_step
from experiments import train as main_job

INT8, INT4 = IntFormat(bits=8), IntFormat(bits=4)
FP8 = FloatFormat(exponent_bits=4, mantissa_bits=3, finite_only=True)

# name -> rules. Low-bit schemes keep the first and last layers at w8a8, as the
# Pareto-optimal 4-bit ResNets and HAWQ do.
SCHEMES: dict[str, list[QuantRule]] = {
    "float": [],
    "w8a8": [QuantRule(pattern=".*", weight=INT8, activation=INT8)],
    "w4a8": first_last_rules(INT8, INT4, activation=INT8),
    "w4a4": first_last_rules(INT8, INT4, activation=INT4),
    "binary": first_last_rules(INT8, BinaryFormat()),  # binary weights, float activations
    "ternary": first_last_rules(INT8, TernaryFormat()),
    "fp8": [QuantRule(pattern=".*", weight=FP8, activation=FP8)],
}


def scheme_rules(name: str) -> list[QuantRule]:
    """The rules of scheme ``name`` (ValueError listing the schemes if unknown)."""
    if name not in SCHEMES:
        raise ValueError(f"Unknown quant scheme {name!r}. Choices: {', '.join(SCHEMES)}.")
    return SCHEMES[name]


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The main job's part of ``config`` (everything but the ``quant`` block)."""
    base = ml_collections.ConfigDict(config.to_dict())
    del base["quant"]
    return base


datasets = main_job.datasets  # the main job's splits, so scripts and main job agree


def final_variables(config: ml_collections.ConfigDict, workdir: str, model) -> dict[str, Any]:
    """The variables (``params``, ``batch_stats``, any ``quant_stats``) of ``workdir``'s last
    checkpoint."""
    train_ds, _ = datasets(config)
    mesh = parallel.make_mesh(config.num_devices)
    tx = main_job.create_optimizer(config)
    target = abstract_train_state(model, tx, input_shape=(1, *train_ds.image_shape), mesh=mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, _ = ckpt.restore(target, step=ckpt.latest_step())
    finally:
        ckpt.close()
    return jax.device_get(state.variables())


def evaluate(config: ml_collections.ConfigDict, model, variables, ds) -> dict[str, float]:
    """Test loss and accuracy of ``model`` with ``variables`` (``quant_stats`` included)."""
    mesh = parallel.make_mesh(config.num_devices)
    step = jit_eval_step(make_eval_step(model, precision=config.precision), mesh=mesh)
    state = TrainState.from_variables(variables)
    return main_job.evaluate(step, state, ds, batch_size=config.eval_batch_size, mesh=mesh)


def train_batches(config: ml_collections.ConfigDict, ds, n: int):
    """The first ``n`` un-augmented train batches (calibration data)."""
    batches = data.eval_batches(ds, batch_size=config.batch_size)
    return [b["image"] for _, b in zip(range(n), batches, strict=False)]


def model_for(config: ml_collections.ConfigDict, ds):
    """The float model the main job trains for ``config`` (same knobs, precision included)."""
    return models.create(config.model, **main_job.model_kwargs(config, ds.num_classes))
