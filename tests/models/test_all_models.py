"""Every registered model, at its tiny size: init + apply + gradient under jit.

Parameterized over the registry, so a model is tested the day it is registered.
Names whose tiny networks are identical (e.g. resnet50 and resnet101 differ only
in depth, which the tiny size overrides) share one compiled test; the grouping is
by the module's full repr, so any knob that differs gives its own test.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from tests.registry_groups import GROUPS
from tests.registry_groups import tiny as _tiny


def test_every_name_is_covered():
    assert sorted(n for group in GROUPS for n in group) == models.list_models()


@pytest.mark.parametrize("names", GROUPS, ids=lambda g: "+".join(g))
def test_every_registered_model_trains_under_jit(names):
    """init + apply (train and eval) + gradient, finite and right shapes, at a tiny size."""
    model = _tiny(names[0])
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    # Jitted: an eager init dispatches (and compiles) every op separately. An "rbg" key
    # halves the compile time of the initializers on CPU (threefry: 7.4 s, rbg: 3.4 s for
    # tiny dm_nfnet_f0 here); which bits the initializers draw does not matter here.
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(lambda k: model.init(k, x, train=False))(key)
    variables.setdefault("batch_stats", {})  # models without BatchNorm have none

    @jax.jit
    def loss_and_grad(params, batch_stats):
        def loss(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},  # dropout / stochastic depth, if any
            )
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), (logits, updates)

        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, (logits, updates)), grads = loss_and_grad(variables["params"], variables["batch_stats"])
    chex.assert_shape(logits, (2, 5))
    chex.assert_tree_all_finite((value, grads, updates))
    chex.assert_trees_all_equal_shapes(grads, variables["params"])
    # Train mode updates the running statistics; eval mode uses them and is deterministic.
    if variables["batch_stats"]:
        assert not all(
            np.allclose(a, b)
            for a, b in zip(
                jax.tree.leaves(updates["batch_stats"]),
                jax.tree.leaves(variables["batch_stats"]),
                strict=True,
            )
        )
    eval_logits = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
    chex.assert_shape(eval_logits, (2, 5))
    chex.assert_tree_all_finite(eval_logits)
    # Every family names its classifier "head"; it must receive gradient.
    assert np.abs(np.asarray(grads["head"]["kernel"])).sum() > 0
