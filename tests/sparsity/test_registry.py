"""Every registered model can be pruned and trained a step with its mask.

Mask construction runs on every distinct tiny network under ``jax.eval_shape`` (no
compile, no FLOPs), which is what the rules, ratios and criteria need to be checked
against a model's parameter tree. The main job's train step (``make_train_step``)
with a :func:`keep_masked` optimizer is traced for every distinct tiny network
(``tests/registry_groups.py``) and compiled and run for one group per family and
block type (``COMPILED``, as in tests/quant/test_transform_registry.py);
``ARCHJAX_SPARSITY_ALL_MODELS=1`` runs every group.
"""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import archjax.models as models
import archjax.sparsity as sp
from archjax.train import abstract_train_state, make_train_step
from tests.registry_groups import GROUPS
from tests.registry_groups import tiny as _tiny

X = jnp.zeros((2, 32, 32, 3))
# One group per family class and block type (the smallest member of each).
COMPILED = {
    "convnext_tiny", "mixer_s16_224", "nf_resnet26", "regnetx_002", "resnet20", "resnet50",
    "vgg11_bn", "vit_tiny_patch16_224",
}  # fmt: skip
ALL = os.environ.get("ARCHJAX_SPARSITY_ALL_MODELS", "0") == "1"


@functools.cache
def _setup(names: tuple[str, ...]):
    """The group's masked optimizer, train step and abstract train state (traced once)."""
    model = _tiny(names[0])
    all_kept = lambda p: jax.tree.map(jnp.isfinite, p)  # noqa: E731
    tx = sp.keep_masked(optax.adamw(1e-2, weight_decay=0.1), all_kept)
    return tx, make_train_step(model, tx), abstract_train_state(model, tx, input_shape=X.shape)


def test_every_registered_model_gets_masks_abstractly():
    for names in GROUPS:
        params = _setup(tuple(names))[2].params
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


def test_every_name_is_covered():
    assert sorted(n for group in GROUPS for n in group) == models.list_models()
    assert set(models.list_models()) >= COMPILED


@pytest.mark.parametrize("names", GROUPS, ids=lambda g: "+".join(g))
def test_every_registered_model_prunes_and_trains_a_step(names):
    tx, step, abstract = _setup(tuple(names))
    batch = {"image": jax.random.normal(jax.random.key(1), X.shape), "label": jnp.array([0, 3])}
    # One trace serves the shape check and the compile.
    traced = jax.jit(step).trace(abstract, batch)
    new, metrics = traced.out_info
    chex.assert_trees_all_equal_shapes_and_dtypes(new, abstract)
    if not (ALL or COMPILED & set(names)):
        return
    # Random fill instead of the real initializers: compiling those would double the cost.
    rng = np.random.default_rng(0)
    state = jax.tree.map(
        lambda s: (
            jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype)
            if jnp.issubdtype(s.dtype, jnp.floating)
            else jnp.zeros(s.shape, s.dtype)
        ),
        abstract,
    )
    state = state.replace(
        batch_stats=jax.tree.map(jnp.ones_like, state.batch_stats),
        opt_state=tx.init(state.params),
    )
    flags = sp.prunable(state.params)
    mask = sp.global_magnitude(state.params, 0.8, prunable=flags)
    state = state.replace(opt_state=sp.set_mask(state.opt_state, mask))
    compiled = traced.lower().compile()
    new, metrics = compiled(state, batch)
    assert np.isfinite(float(metrics["loss"])), names
    pruned = [
        np.asarray(p)
        for p, f in zip(jax.tree.leaves(new.params), jax.tree.leaves(flags), strict=True)
        if f
    ]
    assert sum((p == 0).sum() for p in pruned) >= round(0.8 * sum(p.size for p in pruned))
    for p, m in zip(jax.tree.leaves(new.params), jax.tree.leaves(mask), strict=True):
        assert (np.asarray(p)[~np.asarray(m)] == 0).all()
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True)
    ]
    assert any(changed)
