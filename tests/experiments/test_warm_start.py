"""experiments/train.py warm_start: a fresh run's state from given variables (QAT fine-tune)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archjax.train import TrainState
from experiments.train import warm_start


def _state(tx):
    params = {"conv": {"kernel": jnp.zeros((3, 2)), "scale": jnp.ones((2,))}}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={"bn": {"mean": jnp.zeros((2,))}},
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        collections={"quant_stats": {"conv": {"count": jnp.zeros(())}}},
    )


def test_given_leaves_replace_the_init_and_the_rest_stay():
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), optax.ema(0.5))  # ema's state holds params
    state = _state(tx)
    kernel = np.arange(6.0).reshape(3, 2)
    new = warm_start(
        state,
        {"params": {"conv": {"kernel": kernel}}, "batch_stats": {"bn": {"mean": np.ones(2)}}},
        tx,
    )
    np.testing.assert_array_equal(new.params["conv"]["kernel"], kernel)
    np.testing.assert_array_equal(new.params["conv"]["scale"], np.ones(2))  # not given: kept
    np.testing.assert_array_equal(new.batch_stats["bn"]["mean"], np.ones(2))
    assert new.collections == state.collections
    # The optimizer state is made for the new parameters (ema starts from them).
    expected = tx.init(new.params)
    jax.tree.map(np.testing.assert_array_equal, new.opt_state, expected)


def test_bad_leaves_are_named():
    tx = optax.sgd(0.1)
    state = _state(tx)
    with pytest.raises(ValueError, match="leaves the model lacks: \\['params/conv/bias'\\]"):
        warm_start(state, {"params": {"conv": {"bias": np.zeros(2)}}}, tx)
    with pytest.raises(ValueError, match="params/conv/kernel has shape \\(2, 2\\)"):
        warm_start(state, {"params": {"conv": {"kernel": np.zeros((2, 2))}}}, tx)
