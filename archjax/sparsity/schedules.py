"""Sparsity schedules: one-shot, gradual (Zhu & Gupta) and iterative (IMP) targets.

Learning-rate rewinding (Renda et al., "Comparing Rewinding and Fine-tuning in
Neural Network Pruning", 2020) needs no code here: after pruning, fine-tune with the
original learning-rate schedule restarted from the rewind step instead of the final
(small) learning rate; it is a choice of the optax schedule the caller builds.
"""

from __future__ import annotations

import jax.numpy as jnp

from archjax.sparsity.rules import check_sparsity


def one_shot(sparsity: float, *, step: int = 0):
    """A schedule that is 0 before ``step`` and ``sparsity`` from then on."""
    check_sparsity(sparsity)
    return lambda t: jnp.where(jnp.asarray(t) >= step, sparsity, 0.0)


def gradual_sparsity(
    *, initial: float, final: float, begin_step: int, num_steps: int, frequency: int = 1
):
    """The cubic schedule of Zhu & Gupta, "To prune, or not to prune" (2017).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` for
    ``t0 <= t <= t0 + n * dt``, ``s_i`` before and ``s_f`` after; ``t`` is rounded
    down to a multiple of ``dt`` after ``t0`` so the mask changes every ``dt`` steps.

    Args:
      initial: sparsity ``s_i`` at ``begin_step``.
      final: sparsity ``s_f`` reached after ``num_steps`` pruning steps.
      begin_step: ``t0``.
      num_steps: ``n``, the number of pruning steps.
      frequency: ``dt``, steps between pruning steps.

    Returns:
      ``step -> sparsity`` (jnp scalar; works under jit).

    Example:
      >>> s = gradual_sparsity(initial=0.0, final=0.9, begin_step=1000, num_steps=10, frequency=100)
      >>> float(s(2000))
      0.9
    """
    check_sparsity(initial, field="initial")
    check_sparsity(final, field="final")
    if num_steps < 1 or frequency < 1:
        raise ValueError(f"num_steps={num_steps} and frequency={frequency} must be >= 1.")

    def schedule(t):
        t = jnp.asarray(t)
        done = jnp.clip((t - begin_step) // frequency, 0, num_steps) / num_steps
        return final + (initial - final) * (1.0 - done) ** 3

    return schedule


def imp_sparsities(fraction: float, rounds: int) -> list[float]:
    """Sparsity after each round of iterative magnitude pruning (IMP).

    Frankle & Carbin (2019), Frankle et al. (2020): each round prunes ``fraction``
    of the weights that remain (commonly 0.2), so after round ``r`` the sparsity is
    ``1 - (1 - fraction) ** r``. Each round: train, prune to the next target with
    ``global_magnitude(..., mask=old)``, rewind (:func:`archjax.sparsity.rewind`).

    Example:
      >>> [round(s, 3) for s in imp_sparsities(0.2, 3)]
      [0.2, 0.36, 0.488]
    """
    check_sparsity(fraction, field="fraction")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1.")
    return [1.0 - (1.0 - fraction) ** r for r in range(1, rounds + 1)]


def rounds_for(fraction: float, target: float) -> int:
    """Fewest IMP rounds of ``fraction`` that reach sparsity ``target``."""
    check_sparsity(fraction, field="fraction")
    check_sparsity(target, field="target")
    r = 0
    while 1.0 - (1.0 - fraction) ** r < target - 1e-12:
        r += 1
    return r
