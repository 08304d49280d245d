"""Named optimizer presets built from optax pieces.

Each preset is ``optax.chain`` of standard transforms with a warmup + cosine
learning-rate schedule. Weight decay skips 1-D parameters (BatchNorm scales and
biases), the usual convention since Goyal et al., "Accurate, Large Minibatch
SGD" (2017).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import jax
import optax


def warmup_cosine(
    learning_rate: float, *, num_steps: int, warmup_steps: int = 0, end_factor: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to ``end_factor * lr``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    warmup_steps = min(warmup_steps, num_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=num_steps,
        end_value=learning_rate * end_factor,
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
    del nesterov
    return optax.adamw(schedule, b1=momentum, weight_decay=weight_decay, mask=decay_mask)


_PRESETS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adamw": _adamw,
}


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
) -> optax.GradientTransformation:
    """Builds a named optimizer with a warmup + cosine schedule.

    Args:
      name: one of :func:`list_optimizers` (``"sgd"``, ``"adamw"``).
      learning_rate: peak learning rate.
      num_steps: total training steps (length of the cosine).
      warmup_steps: linear warmup steps.
      momentum: SGD momentum, or Adam's ``b1``.
      weight_decay: decoupled (AdamW) or L2-style (SGD) decay on >=2-D parameters.
      nesterov: Nesterov momentum (SGD only).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> tx = create_optimizer("sgd", learning_rate=0.1, num_steps=1000, warmup_steps=50)
    """
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, _PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown optimizer {name!r}.{hint} Choices: {', '.join(list_optimizers())}."
        )
    schedule = warmup_cosine(learning_rate, num_steps=num_steps, warmup_steps=warmup_steps)
    return _PRESETS[name](schedule, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
