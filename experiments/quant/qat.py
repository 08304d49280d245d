r"""Quantization-aware training of the main job, then static-scale evaluation.

  python -m experiments.quant.qat --config=experiments/quant/configs/qat.py:scheme=w4a4
  python -m experiments.quant.qat --config.quant.scheme=binary --workdir=runs/qat_binary

Trains ``archjax.quant.quantize_model(model, rules)`` with the main job's loop
(experiments/train.py, unchanged: during training activation scales are dynamic,
per batch), then calibrates the static activation scales (``quant_stats``) on
``quant.calibration_batches`` train batches and evaluates the test split with them,
which is the number reported. Writes the main job's outputs plus ``quant.json``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ml_collections
from absl import app, flags, logging

from archjax.quant import calibrate_model, quantize_model
from experiments import config_utils
from experiments import train as main_job
from experiments.quant import common

_HERE = os.path.dirname(__file__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """QAT with ``config.quant.scheme``; returns the main job's summary plus static accuracy."""
    rules = common.scheme_rules(config.quant.scheme)
    base = common.base_config(config)
    wrap = (lambda m: quantize_model(m, rules)) if rules else None
    summary = main_job.train_and_evaluate(base, workdir, wrap_model=wrap)
    train_ds, test_ds = common.datasets(base)
    model = common.model_for(base, train_ds)
    model = wrap(model) if wrap else model
    variables = common.final_variables(base, workdir, model)
    if rules:
        calib = common.train_batches(base, train_ds, config.quant.calibration_batches)
        variables = calibrate_model(model, variables, calib)
    test = common.evaluate(base, model, variables, test_ds)
    result = {
        "scheme": config.quant.scheme,
        "test_accuracy_dynamic": summary["test_accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "steps": summary["steps"],
        "wall_time": summary["wall_time"],
    }
    with open(os.path.join(workdir, "quant.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def cli() -> None:
    """Entry point of ``python -m experiments.quant.qat``."""
    config_flag = config_utils.define_config_flag(os.path.join(_HERE, "configs", "qat.py"))
    workdir_flag = flags.DEFINE_string("workdir", None, "Output dir (default runs/qat_<scheme>).")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)
        config = config_utils.checked_config(
            config_flag, lambda c: config_utils.validate(common.base_config(c))
        )
        workdir = workdir_flag.value or os.path.join("runs", f"qat_{config.quant.scheme}")
        r = train_and_evaluate(config, workdir)
        print(
            f"Done: {r['scheme']} test accuracy {r['test_accuracy']:.4f} (static scales; "
            f"dynamic {r['test_accuracy_dynamic']:.4f}) | steps {r['steps']} | "
            f"wall time {r['wall_time']:.1f}s | workdir {workdir}",
            flush=True,
        )

    app.run(main, argv=sys.argv, flags_parser=config_utils.parse_flags)


if __name__ == "__main__":
    cli()
