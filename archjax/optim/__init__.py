"""Optimizers and their recipe pieces as optax transforms, selectable by name."""

from archjax.optim.clipping import CLASSIFIER_PATTERN, agc, path_mask, spike_clip
from archjax.optim.ema import ParamEmaState, ema_decay, ema_params, find_ema_params
from archjax.optim.presets import STATE_BITS, create_optimizer, decay_mask, list_optimizers
from archjax.optim.quantized_state import (
    QuantizedArray,
    dequantize_blockwise,
    dynamic_map,
    linear_map_no_zero,
    quantize_blockwise,
    quantize_state,
    state_bytes,
)
from archjax.optim.schedules import (
    LR_RULES,
    create_schedule,
    list_schedules,
    scale_lr,
    scale_warmup_steps,
    warmup_cosine,
)

__all__ = [
    "CLASSIFIER_PATTERN",
    "LR_RULES",
    "STATE_BITS",
    "ParamEmaState",
    "QuantizedArray",
    "agc",
    "create_optimizer",
    "create_schedule",
    "decay_mask",
    "dequantize_blockwise",
    "dynamic_map",
    "ema_decay",
    "ema_params",
    "find_ema_params",
    "linear_map_no_zero",
    "list_optimizers",
    "list_schedules",
    "path_mask",
    "quantize_blockwise",
    "quantize_state",
    "scale_lr",
    "scale_warmup_steps",
    "spike_clip",
    "state_bytes",
    "warmup_cosine",
]
