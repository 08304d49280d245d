"""Learning-rate schedules by name, and batch-size scaling rules as plain functions.

Every schedule is an ``optax`` schedule (a function of the step count) built from
optax's own pieces: a linear warmup from 0 followed by cosine, linear, step or
constant decay, or Smith's one-cycle policy.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Sequence

import optax


def _unknown(kind: str, name: str, choices: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown {kind} {name!r}.{hint} Choices: {', '.join(sorted(choices))}.")


def warmup_cosine(
    learning_rate: float, *, num_steps: int, warmup_steps: int = 0, end_factor: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to ``end_factor * lr``.

    Loshchilov & Hutter, "SGDR" (2017) cosine; Goyal et al. (2017) linear warmup.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if warmup_steps > num_steps - 1:
        warnings.warn(
            f"warmup_steps={warmup_steps} >= num_steps={num_steps}: the warmup is cut to "
            f"{num_steps - 1} steps so that the cosine decay has at least one step.",
            UserWarning,
            stacklevel=2,
        )
        warmup_steps = num_steps - 1
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=num_steps,
        end_value=learning_rate * end_factor,
    )


def _with_warmup(learning_rate, warmup_steps, decay: optax.Schedule) -> optax.Schedule:
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _linear(lr, num_steps, warmup_steps):
    return _with_warmup(lr, warmup_steps, optax.linear_schedule(lr, 0.0, num_steps - warmup_steps))


def _step(lr, num_steps, warmup_steps, boundaries=(0.5, 0.75), factor=0.1):
    # He et al. (2016) CIFAR: divide by 10 at 50% and 75% of training.
    scales = {int(b * num_steps) - warmup_steps: factor for b in boundaries}
    return _with_warmup(lr, warmup_steps, optax.piecewise_constant_schedule(lr, scales))


def _constant(lr, num_steps, warmup_steps):
    del num_steps
    return _with_warmup(lr, warmup_steps, optax.constant_schedule(lr))


def _one_cycle(lr, num_steps, warmup_steps):
    # Smith & Topin, "Super-Convergence" (2019): linear up (default 30%), linear down,
    # then a short annihilation phase; `warmup_steps` sets the rising phase if given.
    pct_start = warmup_steps / num_steps if warmup_steps else 0.3
    return optax.linear_onecycle_schedule(
        num_steps, lr, pct_start=pct_start, pct_final=max(0.85, pct_start + 0.05)
    )


_SCHEDULES = {
    "cosine": lambda lr, n, w: warmup_cosine(lr, num_steps=n, warmup_steps=w),
    "linear": _linear,
    "step": _step,
    "constant": _constant,
    "one_cycle": _one_cycle,
}


def list_schedules() -> list[str]:
    """Names accepted by :func:`create_schedule`."""
    return sorted(_SCHEDULES)


def create_schedule(
    name: str, learning_rate: float, *, num_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
    """A named learning-rate schedule with linear warmup.

    Args:
      name: ``cosine`` (to 0), ``linear`` (to 0), ``step`` (x0.1 at 50% and 75% of
        ``num_steps``, He et al. 2016), ``constant``, or ``one_cycle`` (Smith & Topin
        2019; ``warmup_steps`` is its rising phase, 30% if 0).
      learning_rate: peak learning rate.
      num_steps: total steps.
      warmup_steps: linear warmup from 0 (``< num_steps``).

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> sched = create_schedule("step", 0.1, num_steps=1000, warmup_steps=50)
      >>> float(sched(800))  # 0.001
    """
    if name not in _SCHEDULES:
        raise _unknown("schedule", name, list(_SCHEDULES))
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 0 <= warmup_steps < num_steps:
        raise ValueError(f"warmup_steps must be in [0, num_steps={num_steps}), got {warmup_steps}.")
    return _SCHEDULES[name](learning_rate, num_steps, warmup_steps)


LR_RULES = ("linear", "sqrt", "none")


def scale_lr(base_lr: float, base_batch: int, batch: int, rule: str) -> float:
    """Learning rate for ``batch`` given one tuned at ``base_batch``.

    ``linear``: ``lr * batch / base_batch`` (Goyal et al. 2017, SGD); ``sqrt``:
    ``lr * sqrt(batch / base_batch)`` (Krizhevsky 2014; the Adam rule of Granziol
    et al., "Learning Rates as a Function of Batch Size", 2022); ``none``: unchanged.

    Example:
      >>> scale_lr(0.1, 256, 1024, "linear")  # 0.4
    """
    if rule not in LR_RULES:
        raise _unknown("lr scaling rule", rule, LR_RULES)
    if base_batch < 1 or batch < 1:
        raise ValueError(f"Batch sizes must be >= 1, got base_batch={base_batch}, batch={batch}.")
    ratio = batch / base_batch
    return base_lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def scale_warmup_steps(base_warmup_steps: int, base_batch: int, batch: int) -> int:
    """Warmup steps that cover the same number of *examples* at ``batch`` as at ``base_batch``.

    Goyal et al. (2017) warm up for a fixed number of epochs, so the step count
    shrinks as the batch grows: ``round(base_warmup_steps * base_batch / batch)``.

    Example:
      >>> scale_warmup_steps(500, 256, 1024)  # 125
    """
    if base_batch < 1 or batch < 1:
        raise ValueError(f"Batch sizes must be >= 1, got base_batch={base_batch}, batch={batch}.")
    return round(base_warmup_steps * base_batch / batch)
