"""keep_masked keeps pruned weights exactly zero through optax optimizers; rewinding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import archjax.optim as optim
import archjax.sparsity as sp


def _preset(name):
    """archjax's presets are optax's own sgd (momentum), adamw, lamb, lars and novograd,
    here with weight decay under decay masks (optax.masked), AGC and an EMA in the chain."""
    return optim.create_optimizer(
        name, learning_rate=0.05, num_steps=10, weight_decay=0.1, agc_clipping=0.01, ema_decay=0.9
    )


def _moments_zeroed(tx, state, mask) -> bool:
    """Every per-weight params-shaped tree in ``state`` is zero where ``mask`` is False."""
    ok = optax.tree_utils.tree_map_params(
        tx,
        lambda s, k: (
            isinstance(s, optax.MaskedNode)
            or np.shape(s) != np.shape(k)
            or bool((np.asarray(s)[~np.asarray(k)] == 0).all())
        ),
        state,
        mask,
        transform_non_params=lambda _: True,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    return all(jax.tree.leaves(ok))


def _setup():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "conv": {"kernel": jax.random.normal(k1, (3, 3, 4, 8))},
        "head": {"kernel": jax.random.normal(k2, (8, 3)), "bias": jnp.zeros(3)},
    }
    flags = sp.prunable(params, [sp.PruneRule(pattern="kernel$")])
    return params, flags


def _loss(params, x):
    h = jnp.tanh(jnp.einsum("bi,hwio->bo", x, params["conv"]["kernel"]))
    return jnp.mean((h @ params["head"]["kernel"] + params["head"]["bias"]) ** 2)


@pytest.mark.parametrize("name", optim.list_optimizers())
def test_pruned_weights_stay_exactly_zero_and_mask_can_grow(name):
    params, flags = _setup()
    mask = sp.global_magnitude(params, 0.5, prunable=flags)
    tx = sp.keep_masked(_preset(name), mask)
    state = tx.init(params)  # params NOT pre-masked: the first step must zero them
    x = jax.random.normal(jax.random.key(1), (4, 4))

    @jax.jit
    def step(params, state):
        grads = jax.grad(_loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def check(params, mask):
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
            p, m = np.asarray(p), np.asarray(m)
            assert (p[~m] == 0).all()
            assert not np.signbit(p[~m]).any()  # +0, not -0
            assert (p[m] != 0).mean() > 0.9  # kept weights still train

    for _ in range(3):
        params, state = step(params, state)
        check(params, mask)
    # Moments of pruned entries are zero in the state too.
    assert _moments_zeroed(_preset(name), state.inner_state, mask)
    # Gradual / iterative: a larger mask through set_mask, same compiled step.
    mask2 = sp.global_magnitude(params, 0.8, prunable=flags, mask=mask)
    state = sp.set_mask(state, mask2)
    chex.assert_trees_all_equal(sp.get_mask(state), mask2)
    for _ in range(2):
        params, state = step(params, state)
        check(params, mask2)
    # Rewinding a chained state (decay masks, EMA) to a still sparser mask.
    mask3 = sp.global_magnitude(params, 0.9, prunable=flags, mask=mask2)
    _, rewound = sp.rewind(params, mask3, opt_state=state, optimizer=tx)
    chex.assert_trees_all_equal(sp.get_mask(rewound), mask3)
    assert _moments_zeroed(_preset(name), rewound.inner_state, mask3)
    assert not _moments_zeroed(_preset(name), state.inner_state, mask3)  # the check can fail


def test_mask_function_and_errors():
    params, flags = _setup()
    tx = sp.masked_update(optax.sgd(0.1), lambda p: sp.global_magnitude(p, 0.25, prunable=flags))
    state = tx.init(params)
    assert sp.sparsity_of(state.mask, prunable=flags) == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="no keep_masked state"):
        sp.set_mask(optax.sgd(0.1).init(params), state.mask)


def test_rewind_restores_step_k_bitwise_with_mask():
    params, flags = _setup()
    inner = optax.adamw(0.05, weight_decay=0.1)
    tx = sp.keep_masked(inner, jax.tree.map(lambda p: jnp.ones(p.shape, bool), params))
    state = tx.init(params)
    x = jax.random.normal(jax.random.key(1), (4, 4))
    step = jax.jit(
        lambda p, s: (lambda u_s: (optax.apply_updates(p, u_s[0]), u_s[1]))(
            tx.update(jax.grad(_loss)(p, x), s, p)
        )
    )
    init = params
    for t in range(5):
        if t == 2:
            params_k, state_k = params, state
        params, state = step(params, state)
    mask = sp.global_magnitude(params, 0.6, prunable=flags)
    r_params, r_state = sp.rewind(params_k, mask, opt_state=state_k, optimizer=tx)
    for p, q, m in zip(
        jax.tree.leaves(r_params), jax.tree.leaves(params_k), jax.tree.leaves(mask), strict=True
    ):
        p, q, m = np.asarray(p), np.asarray(q), np.asarray(m)
        np.testing.assert_array_equal(p[m].view(np.uint32), q[m].view(np.uint32))  # bitwise
        assert (p[~m] == 0).all()
    chex.assert_trees_all_equal(r_state.mask, mask)
    mu_k, mu_r = state_k.inner_state[0].mu, r_state.inner_state[0].mu
    for a, b, m in zip(
        jax.tree.leaves(mu_r), jax.tree.leaves(mu_k), jax.tree.leaves(mask), strict=True
    ):
        a, b, m = np.asarray(a), np.asarray(b), np.asarray(m)
        np.testing.assert_array_equal(a[m], b[m])
        assert (a[~m] == 0).all()
    assert int(r_state.inner_state[0].count) == int(state_k.inner_state[0].count)
    # Rewinding to initialization: parameters only.
    r0 = sp.rewind(init, mask)
    chex.assert_trees_all_equal(r0, sp.apply_mask(init, mask))
    with pytest.raises(ValueError, match="pass optimizer="):
        sp.rewind(params_k, mask, opt_state=state_k)


def test_zero_is_exact_when_updates_are_narrower_than_params():
    params, flags = _setup()
    mask = sp.global_magnitude(params, 0.5, prunable=flags)
    to_bf16 = optax.stateless(lambda u, _: jax.tree.map(lambda x: x.astype(jnp.bfloat16), u))
    tx = sp.keep_masked(optax.chain(optax.sgd(0.1), to_bf16), mask)
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    for leaf, m in zip(jax.tree.leaves(new), jax.tree.leaves(mask), strict=True):
        assert (np.asarray(leaf)[~np.asarray(m)] == 0).all()  # -p cast to bf16 would not be
