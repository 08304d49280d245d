"""Architecture search: weight-sharing ResNet and ViT supernets, their sandwich-rule
training, search over their children, and zero-cost proxies.

:mod:`archjax.nas.supernet` runs any child of a :class:`ResNetSpace` (elastic depth,
width, kernel size, resolution) in one compiled program and :func:`extract` slices a
child out as a standalone registered ResNet (:mod:`archjax.nas.vit_supernet`: the same
for a :class:`ViTSpace` and the registered ViT); :mod:`archjax.nas.sandwich` trains the
supernet (BigNAS); :mod:`archjax.nas.search` searches its children under a cost
budget on the study engine (random, regularized evolution);
:mod:`archjax.nas.proxies` scores an untrained network from one batch (grad-norm, SNIP,
SynFlow, NASWOT, SWAP).
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
from archjax.nas.sandwich import make_sandwich_step, recalibrate
from archjax.nas.search import (
    COSTS,
    Evolution,
    RandomSearch,
    arch_config,
    check_subspace,
    config_arch,
    make_evaluator,
    pareto,
    run_search,
)
from archjax.nas.supernet import Arch, ResNetSpace, SuperResNet, extract
from archjax.nas.vit_supernet import SuperViT, ViTArch, ViTSpace

__all__ = [
    "COSTS",
    "PROXIES",
    "Evolution",
    "RandomSearch",
    "arch_config",
    "check_subspace",
    "config_arch",
    "make_evaluator",
    "pareto",
    "run_search",
    "Arch",
    "ResNetSpace",
    "SuperResNet",
    "SuperViT",
    "ViTArch",
    "ViTSpace",
    "extract",
    "make_sandwich_step",
    "recalibrate",
    "activation_codes",
    "grad_norm",
    "naswot",
    "score",
    "snip",
    "swap",
    "synflow",
]
from archjax.nas import single_path as single_path  # noqa: E402  (Single-Path NAS)
