"""Every parallel strategy trains exactly like one device (acceptance item 1).

On 8 CPU devices: data parallel, FSDP, FSDP x data, tensor parallel x data (jit
with rule-derived shardings), the shard_map step and the pmap step, for a tiny
ResNet (BatchNorm: cross-device statistics matter) and a tiny ViT.
"""

import chex
import jax
import numpy as np
import optax
import pytest

from archjax import models, parallel
from archjax import train as T

# Data parallelism alone (8 vs 1 device) is tests/train/test_step.py's; here the
# data axis is combined with tensor parallelism.
MESHES = {
    "fsdp": {"fsdp": 8},
    "data_model": {"data": 4, "model": 2},
}
# Split even small leaves, so that the tiny models are really sharded.
RULES = parallel.ShardingRules(fsdp_min_size=0)
MODELS = {
    "resnet": ("resnet8", dict(width_multiplier=0.25), 8),
    "vit": ("vit_tiny_patch16_224", models.tiny_kwargs("vit_tiny_patch16_224"), 32),
}


def _batches(size, n=2, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.normal(size=(batch, size, size, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size=batch).astype(np.int32),
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    name, kwargs, size = MODELS[request.param]
    model = models.create(name, num_classes=10, **kwargs)
    # Momentum SGD: Adam's normalized update would magnify round-off in near-zero gradients.
    tx = optax.sgd(0.1, momentum=0.9)
    batches = _batches(size)
    init = dict(rng=jax.random.key(0), input_shape=(1, size, size, 1))
    # Reference: one device, jit.
    mesh1 = parallel.make_mesh(1)
    state = T.create_train_state(model, tx, mesh=mesh1, **init)
    step = T.jit_train_step(T.make_train_step(model, tx), mesh=mesh1, state=state)
    losses = []
    for b in batches:
        state, m = step(state, parallel.shard_batch(b, mesh1))
        losses.append(float(m["loss"]))
    return model, tx, batches, init, jax.device_get(state), np.asarray(losses)


def _check(setup, state, losses):
    _, _, _, _, ref_state, ref_losses = setup
    assert int(state.step) == len(ref_losses)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    state = jax.device_get(state)
    chex.assert_trees_all_close(state.params, ref_state.params, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(state.batch_stats, ref_state.batch_stats, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(state.opt_state, ref_state.opt_state, rtol=1e-5, atol=1e-5)
    assert ref_losses[0] != ref_losses[-1]  # the steps did change something


@pytest.mark.parametrize("strategy", list(MESHES))
def test_jit_strategy_equals_single_device(setup, strategy):
    model, tx, batches, init, _, _ = setup
    mesh = parallel.make_mesh(shape=MESHES[strategy])
    state = T.create_train_state(model, tx, mesh=mesh, rules=RULES, **init)
    specs = {leaf.sharding.spec for leaf in jax.tree.leaves(state.params)}
    axes = {a for spec in specs for entry in spec for a in np.atleast_1d(entry) if a}
    expected = {"fsdp": {"fsdp"}, "data_model": {"model"}}
    assert axes == expected[strategy], specs
    step = T.jit_train_step(T.make_train_step(model, tx), mesh=mesh, state=state, rules=RULES)
    losses = []
    for b in batches:
        state, m = step(state, parallel.shard_batch(b, mesh))
        losses.append(float(m["loss"]))
    # The layout survives the step (out_shardings), so the next step reuses its compilation.
    assert {leaf.sharding.spec for leaf in jax.tree.leaves(state.params)} == specs
    _check(setup, state, np.asarray(losses))


# The ResNet only: its BatchNorm (cross-device statistics) is the point of shard_map; the
# ViT's per-device body is the same as in the pmap test below.
@pytest.mark.parametrize("setup", ["resnet"], indirect=True)
def test_shard_map_step_equals_single_device(setup):
    model, tx, batches, init, ref_state, _ = setup
    assert ref_state.batch_stats
    mesh = parallel.make_mesh()
    state = T.create_train_state(model, tx, mesh=mesh, **init)
    step = T.shard_map_train_step(model, tx, mesh=mesh)
    losses = []
    for b in batches:
        state, m = step(state, parallel.shard_batch(b, mesh))
        losses.append(float(m["loss"]))
    _check(setup, state, np.asarray(losses))


def test_pmap_step_equals_single_device(setup):
    model, tx, batches, init, _, _ = setup
    state = T.replicate(T.create_train_state(model, tx, **init))
    step = T.pmap_train_step(model, tx)
    losses = []
    for b in batches:
        state, m = step(state, T.split_batch(b, jax.local_device_count()))
        losses.append(float(m["loss"][0]))
    _check(setup, T.unreplicate(state), np.asarray(losses))
