"""TrainState: the model's other collections (a quantized model's quant_stats) travel with it."""

import chex
import jax
import optax

from archjax.quant import IntFormat, QuantRule, quantize_model
from archjax.train import TrainState, make_eval_step, make_train_step
from tests.train.conftest import init_state

INT8 = IntFormat(bits=8)


def test_float_model_has_no_other_collections(tiny_mlp):
    state = init_state(tiny_mlp, optax.sgd(0.1))
    assert state.collections == {} and set(state.variables()) == {"params"}


def test_quantized_model_state_keeps_quant_stats(tiny_mlp, batch16):
    qmodel = quantize_model(tiny_mlp, [QuantRule(pattern=".*", weight=INT8, activation=INT8)])
    tx = optax.sgd(0.1)
    state = init_state(qmodel, tx)
    assert set(state.collections) == {"quant_stats"}
    assert set(state.variables()) == {"params", "quant_stats"}
    new, _ = jax.jit(make_train_step(qmodel, tx))(state, batch16)
    # Training uses (dynamic scales) but does not change them; calibration does.
    chex.assert_trees_all_equal(new.collections, state.collections)
    # An evaluation-only state built from variables evaluates exactly like the state.
    eval_step = jax.jit(make_eval_step(qmodel))
    from_vars = TrainState.from_variables(new.variables())
    chex.assert_trees_all_equal(from_vars.variables(), new.variables())
    chex.assert_trees_all_close(eval_step(from_vars, batch16), eval_step(new, batch16))
