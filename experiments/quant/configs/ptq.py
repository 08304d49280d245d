r"""PTQ on digits: train the main job's float ResNet-20, then quantize it without training.

  python -m experiments.quant.ptq                      # w8a8, with and without BN folding
  python -m experiments.quant.ptq --config.quant.schemes=w8a8,w4a8

The float run is the main job (experiments/configs/default.py); re-running reuses
its checkpoint in ``<workdir>/float``.
"""

import ml_collections

from experiments import config_utils
from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The main job's config plus a ``quant`` block (no declared ``arg``)."""
    config_utils.parse_arg(arg)
    c = default.get_config()
    c.quant = ml_collections.ConfigDict()
    c.quant.schemes = "w8a8,w4a8"  # comma-separated names from experiments.quant.common.SCHEMES
    c.quant.calibration_batches = 8  # train batches that fix the static activation scales
    c.quant.bn_reestimation_batches = 30  # train-mode batches that re-estimate BatchNorm
    return c
