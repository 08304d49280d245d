import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archjax import optim


def test_schedules_by_hand():
    def at(name, *steps, warmup=10):
        s = optim.create_schedule(name, 1.0, num_steps=100, warmup_steps=warmup)
        return [float(s(t)) for t in steps]

    np.testing.assert_allclose(at("cosine", 0, 5, 10, 55, 100), [0, 0.5, 1, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(at("linear", 5, 10, 55, 100), [0.5, 1, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(
        at("step", 5, 49, 50, 74, 75, 99), [0.5, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6
    )
    np.testing.assert_allclose(at("constant", 5, 10, 99), [0.5, 1, 1], atol=1e-6)
    one_cycle = at("one_cycle", 0, 30, 100, warmup=0)
    assert one_cycle[0] == pytest.approx(1 / 25) and one_cycle[1] == pytest.approx(1.0)
    assert one_cycle[2] < 1e-3
    with pytest.raises(ValueError, match=r"Unknown schedule 'cosin'. Did you mean 'cosine'"):
        optim.create_schedule("cosin", 1.0, num_steps=10)


def test_batch_size_rules():
    assert optim.scale_lr(0.1, 256, 1024, "linear") == pytest.approx(0.4)
    assert optim.scale_lr(1e-3, 256, 1024, "sqrt") == pytest.approx(2e-3)
    assert optim.scale_lr(0.1, 256, 1024, "none") == 0.1
    assert optim.scale_warmup_steps(500, 256, 1024) == 125
    with pytest.raises(ValueError, match="Choices: linear, none, sqrt"):
        optim.scale_lr(0.1, 256, 512, "quadratic")


@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("use_jit", [False, True])
def test_ema_params_by_hand(warmup, use_jit):
    tx = optax.chain(optax.sgd(0.5), optim.ema_params(0.9, warmup=warmup))
    params = {"w": jnp.array([1.0, -1.0])}
    state = tx.init(params)
    update = jax.jit(tx.update) if use_jit else tx.update
    ema = np.array([1.0, -1.0])
    for t in range(1, 6):
        grads = {"w": jnp.array([t, 2.0 * t])}
        updates, state = update(grads, state, params)
        chex.assert_trees_all_close(updates["w"], -0.5 * grads["w"])  # passes updates through
        params = optax.apply_updates(params, updates)
        d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        ema = d * ema + (1 - d) * np.asarray(params["w"])
        np.testing.assert_allclose(optim.find_ema_params(state)["w"], ema, rtol=1e-5)
    assert optim.find_ema_params(optax.sgd(0.1).init(params)) is None


def test_create_optimizer_options_compose():
    params = {"conv": {"kernel": jnp.ones((3, 3, 4, 512))}, "head": {"kernel": jnp.ones((4, 2))}}
    tx = optim.create_optimizer(
        "adamw",
        learning_rate=1e-3,
        num_steps=10,
        state_bits=8,
        agc_clipping=0.01,
        spike_clipping=True,
        ema_decay=0.99,
    )
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    is_q = lambda x: isinstance(x, optim.QuantizedArray)  # noqa: E731
    assert any(is_q(x) for x in jax.tree.leaves(state, is_leaf=is_q))
    assert optim.find_ema_params(state) is not None
    with pytest.raises(ValueError, match=r"state_bits must be one of \(32, 8, 4\)"):
        optim.create_optimizer("adamw", learning_rate=1e-3, num_steps=10, state_bits=16)
