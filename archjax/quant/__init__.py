"""Quantization. In this branch only the Hessian-aware mixed-precision search (issue 7).

The quantization package proper (formats, rules, transform; issue 4) is built on
another branch; at merge its ``__init__`` replaces this one and adds the exports below.
"""

from archjax.quant.mixed import (
    Candidate,
    LayerChoice,
    MixedPrecisionPlan,
    SensitivityTable,
    allocate,
    as_candidate,
    sensitivities,
    to_quant_rules,
    uniform_int,
)

__all__ = [
    "Candidate",
    "LayerChoice",
    "MixedPrecisionPlan",
    "SensitivityTable",
    "allocate",
    "as_candidate",
    "sensitivities",
    "to_quant_rules",
    "uniform_int",
]
