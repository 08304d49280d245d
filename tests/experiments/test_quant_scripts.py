"""Smoke tests of experiments/quant/qat.py and ptq.py: a few steps of a tiny ResNet-8."""

import json
import os

import pytest

from experiments.quant import common, ptq, qat
from experiments.quant.configs import ptq as ptq_config
from experiments.quant.configs import qat as qat_config
from tests.conftest import TINY_MODEL_KWARGS, TINY_RUN

# The main job's tiny run (tests/conftest.py), shorter.
TINY = {
    **TINY_RUN,
    "eval_batch_size": 128,
    "num_steps": 4,
    "log_every": 2,
    "eval_every": 4,
    "warmup_steps": 1,
}


def _tiny(config):
    config.update(TINY)
    config.model_kwargs.update(TINY_MODEL_KWARGS)
    config.quant.calibration_batches = 2
    return config


def test_qat_script_trains_and_reports_static_accuracy(tmp_path):
    config = _tiny(qat_config.get_config("scheme=w4a4"))
    result = qat.train_and_evaluate(config, str(tmp_path))
    assert result["scheme"] == "w4a4" and result["steps"] == 4
    assert 0.0 <= result["test_accuracy"] <= 1.0
    with open(tmp_path / "quant.json") as f:
        assert json.load(f) == result
    assert os.path.getsize(tmp_path / "metrics.jsonl") > 0


def test_ptq_script_reports_every_variant(tmp_path):
    config = _tiny(ptq_config.get_config())
    config.quant.schemes = "w8a8"
    config.quant.bn_reestimation_batches = 2
    results = ptq.train_and_evaluate(config, str(tmp_path))
    assert set(results) == {"float", "float/folded", "w8a8/plain", "w8a8/folded", "w8a8/bn_reest"}
    # Folding BatchNorm does not change the float model's predictions.
    assert results["float/folded"] == pytest.approx(results["float"], abs=1 / 359)
    assert all(0.0 <= v <= 1.0 for v in results.values())


def test_unknown_scheme_names_the_choices():
    with pytest.raises(ValueError, match="Unknown quant scheme 'int3'.*w8a8"):
        common.scheme_rules("int3")
