"""Quantization: number formats, fake quantization with STE gradients, calibration,
learned scales (LSQ, PACT), the model transform, its cost model and the
Hessian-aware mixed-precision search.

``quantize_model(model, rules)`` is the model transform (``quantize`` is its deprecated
alias); ``quantize_codes`` / ``dequantize`` are the tensor-level ops. Likewise
``calibrate_model`` fills a model's activation scales and ``calibrate_tensor`` gives one
tensor's scale (``calibrate`` is its deprecated alias).

Numerics (formats, calibration, numerics, learned, cost) and the transform
(rules, transform, ptq, native, export) are separate modules; this file exports both.
"""

# --- numerics ---
from archjax.quant.calibration import CALIBRATION_METHODS, QParams, calibrate, calibrate_tensor
from archjax.quant.cost import CostReport, LayerCost, report
from archjax.quant.distill import batchnorm_gaps, batchnorm_input_stats, distill_calibration_data
from archjax.quant.formats import (
    MXFP4,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    BinaryFormat,
    FloatFormat,
    Format,
    Granularity,
    IntFormat,
    MXFormat,
    NF4Format,
    PerBlock,
    PerChannel,
    PerTensor,
    TernaryFormat,
)
from archjax.quant.learned import lsq_fake_quant, pact

# --- mixed precision (HAWQ-V2 sensitivities, budgeted allocation) ---
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
from archjax.quant.numerics import STE_VARIANTS, dequantize, fake_quant, quantize_codes

# --- transform ---
from archjax.quant.ptq import calibrate_model, fold_batchnorm, reestimate_batch_stats
from archjax.quant.rules import QuantRule, first_last_rules, match_rule
from archjax.quant.transform import (
    QUANT_STATS,
    is_quantized,
    layer_rules,
    quant_rules,
    quantize,
    quantize_model,
    unquantized,
)

__all__ = [
    # --- mixed precision ---
    "Candidate",
    "LayerChoice",
    "MixedPrecisionPlan",
    "SensitivityTable",
    "allocate",
    "as_candidate",
    "sensitivities",
    "to_quant_rules",
    "uniform_int",
    # --- numerics ---
    "CALIBRATION_METHODS",
    "MXFP4",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "MXINT8",
    "STE_VARIANTS",
    "BinaryFormat",
    "CostReport",
    "FloatFormat",
    "Format",
    "Granularity",
    "IntFormat",
    "LayerCost",
    "MXFormat",
    "NF4Format",
    "PerBlock",
    "PerChannel",
    "PerTensor",
    "QParams",
    "TernaryFormat",
    "batchnorm_gaps",
    "batchnorm_input_stats",
    "calibrate",
    "calibrate_tensor",
    "dequantize",
    "distill_calibration_data",
    "fake_quant",
    "lsq_fake_quant",
    "pact",
    "quantize_codes",
    "report",
    # --- transform ---
    "QUANT_STATS",
    "QuantRule",
    "calibrate_model",
    "first_last_rules",
    "fold_batchnorm",
    "is_quantized",
    "layer_rules",
    "match_rule",
    "quant_rules",
    "quantize",
    "quantize_model",
    "reestimate_batch_stats",
    "unquantized",
]
