import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archjax import optim


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamm'. Did you mean 'adamw'\?"):
        optim.create_optimizer("adamm", learning_rate=0.1, num_steps=10)


def test_warmup_cosine_shape():
    schedule = optim.warmup_cosine(1.0, num_steps=100, warmup_steps=10)
    np.testing.assert_allclose(schedule(0), 0.0)
    np.testing.assert_allclose(schedule(5), 0.5, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 1.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(55), 0.5, rtol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(schedule(100), 0.0, atol=1e-7)


def test_decay_mask_skips_vectors():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
        "bn": {"scale": jnp.ones(4)},
    }
    assert optim.decay_mask(params) == {
        "conv": {"kernel": True, "bias": False},
        "bn": {"scale": False},
    }


@pytest.mark.parametrize("name", optim.list_optimizers())
def test_presets_update_under_jit_and_decay_only_matrices(name):
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    tx = optim.create_optimizer(name, learning_rate=0.1, num_steps=10, weight_decay=0.5)
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)(zero_grads, state, params)
    # Step 0 of the warmup-free cosine has lr 0.1; with zero gradients only the decay acts.
    chex.assert_trees_all_close(updates["b"], jnp.zeros(2))
    assert np.all(np.asarray(updates["w"]) < 0)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["w"]) < 1.0)


@pytest.mark.parametrize("name", ["adamw", "lamb", "novograd"])
def test_nesterov_without_effect_warns(name, recwarn):
    optim.create_optimizer(name, learning_rate=0.1, num_steps=10, nesterov=False)
    assert not [w for w in recwarn if "nesterov" in str(w.message)]
    with pytest.warns(UserWarning, match=rf"nesterov=True has no effect with optimizer '{name}'"):
        optim.create_optimizer(name, learning_rate=0.1, num_steps=10, nesterov=True)


def test_warmup_longer_than_the_run_warns_and_is_cut():
    with pytest.warns(UserWarning, match="warmup_steps=20 >= num_steps=10"):
        schedule = optim.warmup_cosine(1.0, num_steps=10, warmup_steps=20)
    assert float(schedule(9)) == pytest.approx(1.0)  # the peak at the last warmup step
