"""Architecture search: zero-cost proxies (supernets and search are issue 17's next parts).

:mod:`archjax.nas.proxies` scores an untrained network from one batch (grad-norm, SNIP,
SynFlow, NASWOT, SWAP); each proxy is a plain function ``(model, variables, batch)``.
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

__all__ = [
    "PROXIES",
    "activation_codes",
    "grad_norm",
    "naswot",
    "score",
    "snip",
    "swap",
    "synflow",
]
