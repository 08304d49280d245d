"""Every registered model can be pruned (abstractly); representative families train a step.

Mask construction runs on every distinct tiny network under ``jax.eval_shape`` (no
compile, no FLOPs), which is what the rules, ratios and criteria need to be checked
against a model's parameter tree. One real masked train step runs for two
families only (a BatchNorm ResNet, a ViT with 3-D attention kernels), to keep the
suite cheap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import archjax.sparsity as sp
from tests.registry_groups import GROUPS
from tests.registry_groups import tiny as _tiny

X = jnp.zeros((2, 32, 32, 3))


def test_every_registered_model_gets_masks_abstractly():
    for names in GROUPS:
        model = _tiny(names[0])
        params = jax.eval_shape(lambda k, m=model: m.init(k, X, train=False), jax.random.key(0))[
            "params"
        ]
        flags = sp.prunable(params)
        assert any(jax.tree.leaves(flags)), names
        ratios = sp.layer_sparsities(params, 0.9, prunable=flags, distribution="erk")
        for build in (
            lambda p, f=flags: sp.global_magnitude(p, 0.9, prunable=f),
            lambda p, f=flags, r=ratios: sp.random_mask(p, r, prunable=f, key=jax.random.key(0)),
        ):
            mask = jax.eval_shape(build, params)
            assert jax.tree.structure(mask) == jax.tree.structure(params), names
            for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
                assert m.shape == p.shape and m.dtype == jnp.bool_, names


@pytest.mark.parametrize("name", ["resnet20", "vit_tiny_patch16_224"])
def test_pruned_model_trains_a_step(name):
    model = _tiny(name)
    # Abstract init + random fill: compiling the real initializers would double the cost.
    shapes = jax.eval_shape(lambda k: model.init(k, X, train=False), jax.random.key(0))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes
    )
    variables["batch_stats"] = jax.tree.map(jnp.ones_like, variables.get("batch_stats", {}))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    flags = sp.prunable(params)
    mask = sp.global_magnitude(params, 0.8, prunable=flags)
    tx = sp.keep_masked(optax.adamw(1e-2, weight_decay=0.1), mask)
    x = jax.random.normal(jax.random.key(1), X.shape)
    labels = jnp.array([0, 3])

    @jax.jit
    def step(params, opt_state, batch_stats):
        def loss(p):
            logits, new = model.apply(
                {"params": p, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new

        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    new_params, _, value = step(params, tx.init(params), batch_stats)
    assert np.isfinite(float(value))
    pruned = [
        np.asarray(p)
        for p, f in zip(jax.tree.leaves(new_params), jax.tree.leaves(flags), strict=True)
        if f
    ]
    assert sum((p == 0).sum() for p in pruned) >= round(0.8 * sum(p.size for p in pruned))
    for p, m in zip(jax.tree.leaves(new_params), jax.tree.leaves(mask), strict=True):
        assert (np.asarray(p)[~np.asarray(m)] == 0).all()
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True)
    ]
    assert any(changed)
