r"""QAT on digits with the main job's ResNet-20: float vs w8a8 vs w4a4 vs binary weights.

Everything but the ``quant`` block is experiments/configs/default.py (the main job).

  python -m experiments.quant.qat --config=experiments/quant/configs/qat.py:scheme=w8a8
  python -m experiments.quant.qat --config.quant.scheme=w4a4 --workdir=runs/qat_w4a4

``quant.scheme`` is a name from ``experiments.quant.common.SCHEMES``.
"""

import ml_collections

from experiments import config_utils
from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The main job's config plus a ``quant`` block; ``arg``: "scheme=w4a4" (declared)."""
    args = config_utils.parse_arg(arg, scheme="w8a8")
    c = default.get_config()
    c.quant = ml_collections.ConfigDict()
    c.quant.scheme = args.scheme  # float, w8a8, w4a8, w4a4, binary, ternary, fp8
    c.quant.calibration_batches = 8  # train batches that fix the static activation scales
    return c
