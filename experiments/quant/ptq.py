r"""Post-training quantization of the main job's float ResNet-20 on digits.

  python -m experiments.quant.ptq
  python -m experiments.quant.ptq --config.quant.schemes=w8a8,w4a8,fp8 --workdir=runs/ptq

Trains (or reuses) the float main job in ``<workdir>/float``, then for each scheme
evaluates three PTQ variants on the test split, all with static activation scales
calibrated on ``quant.calibration_batches`` train batches:

- ``plain``: quantize the trained model as is (BatchNorm in float);
- ``folded``: fold BatchNorm into the preceding convs first (deployment form);
- ``bn_reest``: plain, then re-estimate BatchNorm statistics on the quantized model.

Writes ``<workdir>/ptq.json`` and prints a table.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging

from archjax import data
from archjax.quant import calibrate_model, fold_batchnorm, quantize_model, reestimate_batch_stats
from experiments import config_utils
from experiments import train as main_job
from experiments.quant import common

_HERE = os.path.dirname(__file__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Float main job, then PTQ of it; returns ``{"float": acc, "<scheme>/<variant>": acc}``."""
    schemes = [s for s in config.quant.schemes.split(",") if s]
    for s in schemes:
        common.scheme_rules(s)  # fail before training on an unknown scheme
    base = common.base_config(config)
    float_dir = os.path.join(workdir, "float")
    main_job.train_and_evaluate(base, float_dir)
    train_ds, test_ds = common.datasets(base)
    model = common.model_for(base, train_ds)
    variables = common.final_variables(base, float_dir, model)
    calib = common.train_batches(base, train_ds, config.quant.calibration_batches)
    x = jnp.zeros((1, *train_ds.image_shape), jnp.float32)
    folded = fold_batchnorm(model, variables, x)
    results = {"float": common.evaluate(base, model, variables, test_ds)["accuracy"]}
    results["float/folded"] = common.evaluate(base, model, folded, test_ds)["accuracy"]
    reest_iter = data.train_iterator(
        train_ds, batch_size=base.batch_size, seed=base.seed, random_crop_pad=0
    )
    reest = [next(reest_iter)["image"] for _ in range(config.quant.bn_reestimation_batches)]
    for s in schemes:
        qmodel = quantize_model(model, common.scheme_rules(s))
        plain = calibrate_model(qmodel, variables, calib)
        results[f"{s}/plain"] = common.evaluate(base, qmodel, plain, test_ds)["accuracy"]
        qfolded = calibrate_model(qmodel, folded, calib)
        results[f"{s}/folded"] = common.evaluate(base, qmodel, qfolded, test_ds)["accuracy"]
        re = reestimate_batch_stats(qmodel, plain, reest)
        re = calibrate_model(qmodel, re, calib)
        results[f"{s}/bn_reest"] = common.evaluate(base, qmodel, re, test_ds)["accuracy"]
    with open(os.path.join(workdir, "ptq.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def cli() -> None:
    """Entry point of ``python -m experiments.quant.ptq``."""
    config_flag = config_utils.define_config_flag(os.path.join(_HERE, "configs", "ptq.py"))
    workdir_flag = flags.DEFINE_string("workdir", "runs/ptq", "Output directory.")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)
        config = config_utils.checked_config(
            config_flag, lambda c: config_utils.validate(common.base_config(c))
        )
        results = train_and_evaluate(config, workdir_flag.value)
        print("| model | test accuracy |\n|---|---|")
        for k, v in results.items():
            print(f"| {k} | {v:.4f} |")

    app.run(main, argv=sys.argv, flags_parser=config_utils.parse_flags)


if __name__ == "__main__":
    cli()
