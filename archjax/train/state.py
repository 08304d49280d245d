"""The train state: one pytree that holds everything a training run needs to resume."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from archjax.parallel import ShardingRules, tree_shardings


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as a pytree of arrays.

    The model and the optimizer are *functions* and are not stored here: the
    train step closes over them (see :func:`archjax.train.make_train_step`).

    Attributes:
      step: int32 scalar, number of optimizer updates done.
      params: the ``params`` collection of the model.
      batch_stats: the ``batch_stats`` collection (BatchNorm running statistics);
        an empty dict for models without BatchNorm.
      opt_state: the optax optimizer state.
      rng: raw PRNG key data (``uint32[2]`` for the default ``threefry`` key). Raw
        data rather than a typed key so that the state is a plain array pytree that
        any checkpointer saves; the step folds in ``step`` to draw per-step keys.
      collections: the model's other variable collections, by name, e.g. the
        ``quant_stats`` of a quantized model (:func:`archjax.quant.quantize_model`);
        passed to ``model.apply`` and saved, but not changed by the train step.
        Empty (no leaves, so checkpoints are unchanged) for a float model.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array
    collections: dict[str, Any] = flax.struct.field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        """The variables dict that ``model.apply`` takes."""
        variables = {"params": self.params, **self.collections}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables

    def apply_updates(
        self, updates: Any, opt_state: optax.OptState, batch_stats: Any
    ) -> TrainState:
        """The state one optimizer step later: ``updates`` added to the parameters."""
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )

    @classmethod
    def from_variables(cls, variables: dict[str, Any]) -> TrainState:
        """An evaluation-only state at step 0 that holds ``variables`` (no optimizer state).

        For variables made outside training (PTQ calibration, BatchNorm folding)
        that the eval step should see, e.g.
        ``make_eval_step(model)(TrainState.from_variables(calibrated), batch)``.
        """
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=optax.EmptyState(),
            rng=jax.random.key_data(jax.random.key(0)),
            collections=_other_collections(variables),
        )


# Collections that are not state: sown values (``intermediates``) are outputs of a call.
_NOT_STATE = ("params", "batch_stats", "intermediates")


def _other_collections(variables: dict[str, Any]) -> dict[str, Any]:
    """The collections of ``variables`` that :class:`TrainState` keeps in ``collections``."""
    return {name: value for name, value in variables.items() if name not in _NOT_STATE}


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, input_shape: Sequence[int]):
    def init(rng: jax.Array) -> TrainState:
        param_rng, state_rng = jax.random.split(rng)
        variables = model.init(param_rng, jnp.zeros(input_shape, jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=jax.random.key_data(state_rng),
            collections=_other_collections(variables),
        )

    return init


def abstract_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    input_shape: Sequence[int],
    mesh: Mesh | None = None,
    rules: ShardingRules | None = None,
) -> TrainState:
    """Shapes, dtypes (and shardings if ``mesh`` is given) of a train state, without FLOPs.

    This is the restore target of :class:`archjax.checkpoint.Checkpointer`; a
    mesh other than the one the checkpoint was written on (another device count
    or strategy) is fine: each leaf is read into its new sharding.
    """
    abstract = jax.eval_shape(_init_fn(model, tx, input_shape), jax.random.key(0))
    if mesh is None:
        return abstract
    sharding = state_sharding(abstract, mesh, rules)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sharding
    )


def state_sharding(state: Any, mesh: Mesh, rules: ShardingRules | None = None) -> Any:
    """Per-leaf shardings of a train state under the logical-axis ``rules``.

    On a 1-D ``data`` mesh everything is replicated (data parallelism); on a
    ``data x fsdp x model`` mesh parameters, optimizer state and BatchNorm
    statistics are split as :mod:`archjax.parallel.rules` says.
    """
    return tree_shardings(state, mesh, rules)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    rng: jax.Array,
    input_shape: Sequence[int],
    mesh: Mesh | None = None,
    rules: ShardingRules | None = None,
) -> TrainState:
    """Initialises a train state, placed on ``mesh`` if given.

    Follows the pattern ``jax.eval_shape`` -> shardings -> ``jax.jit(init,
    out_shardings=...)`` so that each device materialises only its own part.

    Args:
      model: a Flax module called as ``model(x, train=...)``.
      tx: an optax optimizer.
      rng: a PRNG key (``jax.random.key(seed)``); split into init and step keys.
      input_shape: shape of a dummy input batch, e.g. ``(1, 16, 16, 1)``.
      mesh: optional mesh; the state is laid out on it by ``rules``.
      rules: logical-axis rules (default :class:`archjax.parallel.ShardingRules`).

    Returns:
      A :class:`TrainState` at step 0.

    Example:
      >>> model = archjax.models.create("resnet20", num_classes=10)
      >>> state = create_train_state(model, optax.adam(1e-3), rng=jax.random.key(0),
      ...                            input_shape=(1, 16, 16, 1))
    """
    init = _init_fn(model, tx, input_shape)
    if mesh is None:
        return jax.jit(init)(rng)
    abstract = jax.eval_shape(init, rng)
    return jax.jit(init, out_shardings=state_sharding(abstract, mesh, rules))(rng)
