r"""The main job's sparsity: ``--config.sparsity.*`` on top of :mod:`archjax.sparsity`.

With ``sparsity.method != "none"`` the optimizer is wrapped in
:func:`archjax.sparsity.keep_masked`, so the mask lives in ``TrainState.opt_state``
(a :class:`archjax.sparsity.MaskedState`) and is saved and restored with every
checkpoint. Before the update of each step that the schedule names, the mask is
recomputed from the current state (``one_shot``: at ``begin_step``; ``gradual``:
Zhu & Gupta's cubic schedule every ``frequency`` steps from ``begin_step`` to
``end_step``) and the pruned weights are set to zero. A pruning step is a pure
function of the state, so a run resumed at that step prunes to the same mask.

Iterative magnitude pruning (IMP, Frankle et al. 2019, 2020) is a chain of runs:

  python -m experiments.train --workdir=runs/imp0 --config.sparsity.method=magnitude \
      --config.sparsity.rewind_step=20                       # dense round, keeps step 20
  python -m experiments.train --workdir=runs/imp1 --config.sparsity.method=magnitude \
      --config.sparsity.rewind_step=20 --config.sparsity.target=0.5 \
      --config.sparsity.imp_from=runs/imp0                   # prune 50%, rewind to step 20

A round with ``imp_from`` prunes the previous round's final weights to ``target``
(its pruned weights stay pruned) and starts from the previous round's state at its
``rewind_step`` (``rewind="weights"``; kept in ``<workdir>/rewind``), from the final
weights with the step-k optimizer state and schedule (``"lr"``, learning-rate
rewinding, Renda et al. 2020), or from a fresh initialization with the same mask
(``"reinit"``, the lottery-ticket control).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import optax

from archjax import quant
from archjax import sparsity as sp
from archjax.checkpoint import Checkpointer
from archjax.train import TrainState, abstract_train_state, state_sharding

METHODS = ("none", "magnitude", "layer_magnitude", "random", "snip", "n_m")
SCHEDULES = ("one_shot", "gradual")
REWINDS = ("weights", "lr", "reinit")
# Criteria that take the previous mask (so a gradual schedule or IMP only adds zeros).
_ITERATIVE = ("magnitude", "layer_magnitude")
REWIND_DIR = "rewind"


def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` trains with a mask."""
    return config.sparsity.method != "none"


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the first impossible ``config.sparsity`` value."""
    s = config.sparsity
    for key, allowed in (("method", METHODS), ("schedule", SCHEDULES), ("rewind", REWINDS)):
        if s[key] not in allowed:
            raise ValueError(
                f"Unknown config.sparsity.{key} {s[key]!r}. Choices: {', '.join(allowed)}."
            )
    if s.distribution not in sp.rules.DISTRIBUTIONS:
        raise ValueError(
            f"Unknown config.sparsity.distribution {s.distribution!r}. "
            f"Choices: {', '.join(sp.rules.DISTRIBUTIONS)}."
        )
    sp.rules.check_sparsity(s.target, field="config.sparsity.target")
    if not 0 < s.n <= s.m:
        raise ValueError(f"config.sparsity needs 0 < n <= m, got n={s.n}, m={s.m}.")
    if s.method == "n_m" and s.target not in (0.0, 1.0 - s.n / s.m):
        raise ValueError(
            f"config.sparsity.target={s.target} with method n_m: the sparsity is 1 - n/m "
            f"= {1 - s.n / s.m}; leave target at 0."
        )
    if not 0 <= s.begin_step < config.num_steps:
        raise ValueError(
            f"config.sparsity.begin_step={s.begin_step} must be in [0, num_steps="
            f"{config.num_steps})."
        )
    if s.schedule == "gradual":
        if s.method not in _ITERATIVE:
            raise ValueError(
                f"config.sparsity.schedule=gradual needs method magnitude or layer_magnitude "
                f"(they keep earlier zeros), got {s.method!r}."
            )
        if not s.begin_step < s.end_step < config.num_steps or s.frequency < 1:
            raise ValueError(
                f"config.sparsity gradual schedule needs begin_step < end_step < num_steps and "
                f"frequency >= 1, got {s.begin_step}, {s.end_step}, {config.num_steps}, "
                f"{s.frequency}."
            )
    if s.rewind_step is not None and not 0 <= s.rewind_step < config.num_steps:
        raise ValueError(
            f"config.sparsity.rewind_step={s.rewind_step} must be in [0, num_steps="
            f"{config.num_steps})."
        )
    if s.imp_from is not None:
        if s.method not in _ITERATIVE:
            raise ValueError(
                f"config.sparsity.imp_from (an IMP round) needs method magnitude or "
                f"layer_magnitude, got {s.method!r}."
            )
        if s.rewind != "reinit" and s.rewind_step is None:
            raise ValueError(
                f"config.sparsity.imp_from with rewind={s.rewind!r} needs "
                "config.sparsity.rewind_step (the step the previous round kept)."
            )
    elif enabled(config) and s.target == 0.0 and s.method != "n_m" and s.rewind_step is None:
        raise ValueError(
            f"config.sparsity.method={s.method!r} with target 0 prunes nothing; set "
            "config.sparsity.target (or rewind_step, for the dense round of IMP)."
        )


def wrap_optimizer(config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
    """``tx`` inside :func:`archjax.sparsity.keep_masked` (all kept at init) if sparsity is on."""
    if not enabled(config):
        return tx
    return sp.keep_masked(tx, lambda params: jax.tree.map(lambda p: p == p, params))


def _prunable(config: ml_collections.ConfigDict, params):
    s = config.sparsity
    rules = sp.first_last_rules(prune_first=s.prune_first, prune_last=s.prune_last)
    return sp.prunable(params, rules if s.prune_first or s.prune_last else None)


def target_at(config: ml_collections.ConfigDict, step: int) -> float | None:
    """The sparsity the schedule prunes to before the update of ``step``, or None."""
    s = config.sparsity
    if not enabled(config) or (s.imp_from is not None):
        return None  # an IMP round prunes once, at its start (start_round)
    target = 1.0 - s.n / s.m if s.method == "n_m" else s.target
    if s.schedule == "one_shot":
        return target if step == s.begin_step and target > 0 else None
    if step < s.begin_step or step > s.end_step or (step - s.begin_step) % s.frequency:
        return None
    schedule = sp.gradual_sparsity(
        initial=0.0,
        final=target,
        begin_step=s.begin_step,
        num_steps=max(1, (s.end_step - s.begin_step) // s.frequency),
        frequency=s.frequency,
    )
    return float(schedule(step))


def make_mask_fn(config: ml_collections.ConfigDict, model):
    """``(params, old_mask, batch_stats, batch, target) -> mask`` for ``config.sparsity.method``."""
    s = config.sparsity

    def grads_at(params, batch_stats, batch):
        def loss(p):
            variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
            logits, _ = model.apply(
                variables,
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(config.seed)},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        return jax.grad(loss)(params)

    def mask_fn(params, old, batch_stats, batch, target):
        flags = _prunable(config, params)
        if s.method == "magnitude":
            return sp.global_magnitude(params, target, prunable=flags, mask=old)
        if s.method == "n_m":
            return sp.n_m(params, prunable=flags, n=s.n, m=s.m)
        if s.method == "snip":
            return sp.snip(params, grads_at(params, batch_stats, batch), target, prunable=flags)
        ratios = sp.layer_sparsities(params, target, prunable=flags, distribution=s.distribution)
        if s.method == "layer_magnitude":
            return sp.layer_magnitude(params, ratios, prunable=flags, mask=old)
        return sp.random_mask(params, ratios, prunable=flags, key=jax.random.key(config.seed + 1))

    return mask_fn


def make_prune(config: ml_collections.ConfigDict, model, *, mesh, state: TrainState):
    """``(state, batch, target) -> state`` with a new mask; jitted once per target.

    The pruned weights are zeroed at once (not only by the next update), so an
    evaluation or a checkpoint right after pruning sees the sparse network.
    """
    mask_fn = make_mask_fn(config, model)

    def prune(state: TrainState, batch, target: float) -> TrainState:
        old = sp.get_mask(state.opt_state)
        mask = mask_fn(state.params, old, state.batch_stats, batch, target)
        return state.replace(
            params=sp.apply_mask(state.params, mask), opt_state=sp.set_mask(state.opt_state, mask)
        )

    return jax.jit(
        prune, static_argnums=2, out_shardings=state_sharding(state, mesh), donate_argnums=0
    )


def mask_of(state: TrainState) -> Any | None:
    """The mask in ``state.opt_state``, or None for a dense run."""
    try:
        return sp.get_mask(state.opt_state)
    except ValueError:
        return None


def final_cost(config: ml_collections.ConfigDict, model, state: TrainState, input_shape) -> dict:
    """What the final mask removes: ``{"sparsity", "macs_kept"}`` ({} for a dense run).

    ``sparsity`` is the fraction of the prunable weights that are zero; ``macs_kept`` the
    fraction of the forward pass's multiply-accumulates whose weight is kept (each layer's
    MACs, as :func:`archjax.quant.report` counts them, scaled by its kernel's density), so
    two masks of one sparsity can differ in the compute they save.
    """
    mask = mask_of(state)
    if mask is None:
        return {}
    mask = jax.device_get(mask)
    flags = _prunable(config, state.params)
    report = quant.report(model, [], input_shape)  # no rules: 32 x 32 bits, BOPs ~ MACs
    return {
        "sparsity": sp.sparsity_of(mask, prunable=flags),
        "macs_kept": sp.sparse_bops(report, mask) / report.bops,
    }


class LoopHooks:
    """What the train loop does for sparsity before each update (nothing when it is off).

    ``before_step`` keeps the state of ``sparsity.rewind_step`` in ``<workdir>/rewind``
    (with the data iterator's position, so a rewound round sees the same batches),
    takes the step's batch and prunes if the schedule says so.
    """

    def __init__(self, config: ml_collections.ConfigDict, model, workdir: str, *, mesh, state):
        self.config = config
        self.prune = make_prune(config, model, mesh=mesh, state=state) if enabled(config) else None
        self.rewind = None
        if config.sparsity.rewind_step is not None:
            self.rewind = Checkpointer(
                os.path.join(workdir, REWIND_DIR),
                max_to_keep=1,
                async_save=config.async_checkpoints,
            )

    def before_step(self, state: TrainState, step: int, train_iter) -> tuple[TrainState, Any]:
        """``(state, batch)`` for the update of ``step``."""
        if self.rewind is not None and step == self.config.sparsity.rewind_step:
            self.rewind.save(step, state, data_state=train_iter.get_state(), force=True)
        batch = next(train_iter)
        target = None if self.prune is None else target_at(self.config, step)
        if target is not None:
            state = self.prune(state, batch, target)
        return state, batch

    def close(self) -> None:
        if self.rewind is not None:
            self.rewind.close()


def _previous(config: ml_collections.ConfigDict, model, optimizer_for, *, input_shape, mesh):
    """The previous IMP round's abstract state (dense or masked) and whether it was masked."""
    prev = config.sparsity.imp_from
    path = os.path.join(prev, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.sparsity.imp_from={prev!r} holds no config.json.")
    with open(path) as f:
        prev_config = ml_collections.ConfigDict(json.load(f))
    masked = enabled(prev_config)
    target = abstract_train_state(
        model, optimizer_for(prev_config), input_shape=input_shape, mesh=mesh
    )
    return prev_config, masked, target


def start_round(
    config: ml_collections.ConfigDict,
    model,
    fresh: TrainState,
    *,
    optimizer_for,
    input_shape,
    mesh,
) -> tuple[TrainState, dict | None]:
    """The first state of an IMP round (``sparsity.imp_from``) and its data state.

    Args:
      config: this round's config.
      model: the model (as trained by the previous round).
      fresh: a newly initialized state (used by ``rewind="reinit"``).
      optimizer_for: ``config -> optax optimizer`` (the main job's ``create_optimizer``),
        for this round's masked optimizer and the previous round's (maybe dense) one.
      input_shape: the model's input shape.
      mesh: the device mesh.

    Returns:
      ``(state, data_state)``; ``data_state`` is None when training starts at step 0.
    """
    s = config.sparsity
    tx = optimizer_for(config)
    prev_config, masked, target = _previous(
        config, model, optimizer_for, input_shape=input_shape, mesh=mesh
    )
    with Checkpointer(os.path.join(s.imp_from, "checkpoints"), async_save=False) as ckpt:
        final, _ = ckpt.restore(target)
    if int(final.step) != prev_config.num_steps:
        raise ValueError(
            f"config.sparsity.imp_from={s.imp_from!r} stopped at step {int(final.step)} of "
            f"{prev_config.num_steps}: finish that round first."
        )
    old = sp.get_mask(final.opt_state) if masked else None
    mask = jax.jit(make_mask_fn(config, model), static_argnums=4)(
        final.params, old, final.batch_stats, None, s.target
    )
    sharding = state_sharding(fresh, mesh)
    if s.rewind == "reinit":
        state = fresh.replace(
            params=sp.apply_mask(fresh.params, mask), opt_state=sp.set_mask(fresh.opt_state, mask)
        )
        return jax.device_put(state, sharding), None
    if s.rewind_step != prev_config.sparsity.rewind_step:
        raise ValueError(
            f"config.sparsity.rewind_step={s.rewind_step} but the previous round "
            f"({s.imp_from}) kept step {prev_config.sparsity.rewind_step}."
        )
    with Checkpointer(os.path.join(s.imp_from, REWIND_DIR), async_save=False) as ckpt:
        early, data_state = ckpt.restore(target, step=s.rewind_step)
    opt_state = early.opt_state
    if not masked:
        opt_state = sp.MaskedState(mask=mask, inner_state=opt_state)
    params = early.params if s.rewind == "weights" else final.params
    batch_stats = early.batch_stats if s.rewind == "weights" else final.batch_stats
    params, opt_state = sp.rewind(params, mask, opt_state=opt_state, optimizer=tx)
    state = early.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
    return jax.device_put(state, sharding), data_state
