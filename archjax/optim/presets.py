"""Named optimizer presets built from optax pieces, plus the recipe pieces around them.

Each preset is optax's own optimizer (``sgd``, ``adamw``, ``lars``, ``lamb``,
``novograd``) with a named learning-rate schedule; :func:`create_optimizer`
optionally chains spike clipping and AGC in front, stores the state in 8 or 4
bits, and tracks an EMA of the parameters at the end. Weight decay skips 1-D
parameters (BatchNorm scales and biases), the usual convention since Goyal et
al., "Accurate, Large Minibatch SGD" (2017).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import optax

from archjax.optim.clipping import CLASSIFIER_PATTERN, agc, spike_clip
from archjax.optim.ema import ema_params
from archjax.optim.quantized_state import quantize_state
from archjax.optim.schedules import _unknown, create_schedule


def _ignored_nesterov(name: str, nesterov: bool) -> None:
    """Nesterov momentum exists only for sgd and lars; say so instead of dropping it."""
    if nesterov:
        warnings.warn(
            f"nesterov=True has no effect with optimizer {name!r} (only sgd and lars use "
            "Nesterov momentum); set nesterov=False to silence this.",
            UserWarning,
            stacklevel=3,
        )


def decay_mask(params):
    """True for parameters that get weight decay: every leaf with more than one dimension."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _sgd(schedule, *, momentum: float, weight_decay: float, nesterov: bool = False):
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov),
    )


def _adamw(schedule, *, momentum: float, weight_decay: float, nesterov: bool = False):
    _ignored_nesterov("adamw", nesterov)
    return optax.adamw(schedule, b1=momentum, weight_decay=weight_decay, mask=decay_mask)


def _lars(schedule, *, momentum: float, weight_decay: float, nesterov: bool = False):
    # You et al., "Large Batch Training of Convolutional Networks" (2017). optax's
    # trust ratio is eta * ||w|| / ||g + wd * w|| (decay added first); biases and
    # norm parameters get neither decay nor the trust ratio, as in the reference code.
    return optax.lars(
        schedule,
        weight_decay=weight_decay,
        weight_decay_mask=decay_mask,
        trust_coefficient=0.001,
        trust_ratio_mask=decay_mask,
        momentum=momentum,
        nesterov=nesterov,
    )


def _lamb(schedule, *, momentum: float, weight_decay: float, nesterov: bool = False):
    _ignored_nesterov("lamb", nesterov)
    # You et al., "Large Batch Optimization for Deep Learning" (2020): ratio ||w|| / ||r||.
    return optax.lamb(schedule, b1=momentum, weight_decay=weight_decay, mask=decay_mask)


def _novograd(schedule, *, momentum: float, weight_decay: float, nesterov: bool = False):
    _ignored_nesterov("novograd", nesterov)
    # Ginsburg et al. (2019). optax adds the decay inside the layer-wise moment with no
    # mask; the moments are per leaf, so splitting leaves in two groups is exact.
    labels = lambda params: jax.tree.map(lambda d: "decay" if d else "no_decay", decay_mask(params))  # noqa: E731
    return optax.multi_transform(
        {
            "decay": optax.novograd(schedule, b1=momentum, weight_decay=weight_decay),
            "no_decay": optax.novograd(schedule, b1=momentum, weight_decay=0.0),
        },
        labels,
    )


_PRESETS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adamw": _adamw,
    "lars": _lars,
    "lamb": _lamb,
    "novograd": _novograd,
}

STATE_BITS = (32, 8, 4)


def list_optimizers() -> list[str]:
    """Names accepted by :func:`create_optimizer`."""
    return sorted(_PRESETS)


def create_optimizer(
    name: str,
    *,
    learning_rate: float,
    num_steps: int,
    warmup_steps: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    schedule: str = "cosine",
    state_bits: int = 32,
    agc_clipping: float = 0.0,
    agc_skip: str | None = CLASSIFIER_PATTERN,
    spike_clipping: bool = False,
    ema_decay: float = 0.0,
    ema_warmup: bool = True,
    skip_nonfinite: int = 0,
) -> optax.GradientTransformation:
    """Builds a named optimizer and the recipe pieces around it.

    The chain is ``[spike_clip] -> [agc] -> optimizer (state in state_bits) -> [ema]``,
    wrapped in ``optax.apply_if_finite`` with ``skip_nonfinite``.

    Args:
      name: one of :func:`list_optimizers`: ``sgd`` (+Nesterov), ``adamw``, ``lars``,
        ``lamb``, ``novograd``. Weight decay skips 1-D parameters (biases, norms).
      learning_rate: peak learning rate.
      num_steps: total training steps (length of the schedule).
      warmup_steps: linear warmup steps.
      momentum: SGD/LARS momentum, or ``b1`` of AdamW/LAMB/NovoGrad.
      weight_decay: decoupled (AdamW, LAMB) or L2-style (SGD, LARS, NovoGrad) decay.
      nesterov: Nesterov momentum (SGD and LARS).
      schedule: one of :func:`archjax.optim.list_schedules`.
      state_bits: 32 (float32 state), 8 or 4 (:func:`archjax.optim.quantize_state`).
      agc_clipping: AGC ratio (0 = off), see :func:`archjax.optim.agc`.
      agc_skip: regex of parameter paths AGC leaves alone (the classifier).
      spike_clipping: Stable-SPAM spike clipping (:func:`archjax.optim.spike_clip`).
      ema_decay: EMA of the parameters in the optimizer state (0 = off).
      ema_warmup: warm the EMA decay up (:func:`archjax.optim.ema_decay`).
      skip_nonfinite: skip an update whose gradients hold a NaN or inf (no change to
        the parameters or any optimizer state), up to this many in a row, after which
        they are applied (``optax.apply_if_finite``; its state counts them in
        ``total_notfinite``). 0 = off.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> tx = create_optimizer("sgd", learning_rate=0.1, num_steps=1000, warmup_steps=50)
      >>> tx8 = create_optimizer("adamw", learning_rate=1e-3, num_steps=1000, state_bits=8)
    """
    if name not in _PRESETS:
        raise _unknown("optimizer", name, list(_PRESETS))
    if state_bits not in STATE_BITS:
        raise ValueError(f"state_bits must be one of {STATE_BITS}, got {state_bits!r}.")
    if agc_clipping < 0:
        raise ValueError(f"agc_clipping must be >= 0 (0 = off), got {agc_clipping}.")
    if skip_nonfinite < 0:
        raise ValueError(f"skip_nonfinite must be >= 0 (0 = off), got {skip_nonfinite}.")
    sched = create_schedule(
        schedule, learning_rate, num_steps=num_steps, warmup_steps=min(warmup_steps, num_steps - 1)
    )
    tx = _PRESETS[name](sched, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if state_bits != 32:
        tx = quantize_state(tx, bits=state_bits)
    parts = []
    if spike_clipping:
        parts.append(spike_clip())
    if agc_clipping:
        parts.append(agc(agc_clipping, skip=agc_skip))
    parts.append(tx)
    if ema_decay:
        parts.append(ema_params(ema_decay, warmup=ema_warmup))
    tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=skip_nonfinite)
    return tx
