"""Architecture search: a weight-sharing ResNet supernet, its sandwich-rule training, and
zero-cost proxies.

:mod:`archjax.nas.supernet` runs any child of a :class:`ResNetSpace` (elastic depth,
width, kernel size, resolution) in one compiled program and :func:`extract` slices a
child out as a standalone registered ResNet; :mod:`archjax.nas.sandwich` trains the
supernet (BigNAS); :mod:`archjax.nas.proxies` scores an untrained network from one
batch (grad-norm, SNIP, SynFlow, NASWOT, SWAP).
"""

from archjax.nas.proxies import (
    PROXIES,
    activation_codes,
    grad_norm,
    naswot,
    score,
    snip,
    swap,
    synflow,
)
from archjax.nas.sandwich import make_sandwich_step, recalibrate, sample_encoding
from archjax.nas.supernet import Arch, ResNetSpace, SuperResNet, extract

__all__ = [
    "PROXIES",
    "Arch",
    "ResNetSpace",
    "SuperResNet",
    "extract",
    "make_sandwich_step",
    "recalibrate",
    "sample_encoding",
    "activation_codes",
    "grad_norm",
    "naswot",
    "score",
    "snip",
    "swap",
    "synflow",
]
from archjax.nas import single_path as single_path  # noqa: E402  (Single-Path NAS)
