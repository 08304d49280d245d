"""The pure train step: sharded on 8 devices == 1 device, and loss/metric definitions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import archjax.models as models
from archjax import parallel
from archjax.train import (
    Recipe,
    accuracy,
    create_train_state,
    cross_entropy,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_train_step,
)

INPUT = (1, 8, 8, 1)


def _batches(n, batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.normal(size=(batch_size, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size=batch_size).astype(np.int32),
        }
        for _ in range(n)
    ]


def _run(num_devices, batches, model, tx):
    mesh = parallel.make_mesh(num_devices)
    state = create_train_state(model, tx, rng=jax.random.key(0), input_shape=INPUT, mesh=mesh)
    step = jit_train_step(make_train_step(model, tx, recipe=Recipe(label_smoothing=0.1)), mesh=mesh)
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
        losses.append(metrics["loss"])
    return jax.device_get(state), np.asarray(losses)


def test_eight_devices_match_one_device():
    """Data parallelism changes nothing: same losses, params and BN stats after 3 steps."""
    assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
    model = models.create("resnet8", num_classes=10, width_multiplier=0.5)
    tx = optax.sgd(0.1, momentum=0.9)
    batches = _batches(3)
    state1, losses1 = _run(1, batches, model, tx)
    state8, losses8 = _run(8, batches, model, tx)
    assert int(state8.step) == 3
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats, rtol=1e-5, atol=1e-5)
    # The step did learn something (the comparison is not between two no-ops).
    assert losses1[-1] != losses1[0]


@pytest.fixture(scope="module")
def tiny():
    """A tiny model with its optimizer and 8-device mesh, compiled once for the module."""
    model = models.create("resnet8", num_classes=10, width_multiplier=0.25)
    tx = optax.adam(1e-2)
    mesh = parallel.make_mesh()
    step = jit_train_step(make_train_step(model, tx), mesh=mesh)
    created = create_train_state(model, tx, rng=jax.random.key(0), input_shape=INPUT, mesh=mesh)
    host, sharding = jax.device_get(created), jax.tree.map(lambda x: x.sharding, created)
    # A fresh copy per test (the step donates its input) without compiling init again.
    new_state = lambda: jax.device_put(host, sharding)
    return model, mesh, new_state, step


def test_sharded_state_and_batch_placement(tiny):
    _, mesh, new_state, step = tiny
    state = new_state()
    batch = parallel.shard_batch(_batches(1)[0], mesh)
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(batch["image"].addressable_shards) == 8
    assert batch["image"].addressable_shards[0].data.shape == (2, 8, 8, 1)
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.sharding.is_fully_replicated
    old_leaf = jax.tree.leaves(state.params)[0]
    new_state, _ = step(state, batch)
    assert old_leaf.is_deleted(), "the train step should donate the input state"
    assert jax.tree.leaves(new_state.params)[0].sharding.is_fully_replicated


def test_eval_step_masks_padding(tiny):
    model, mesh, new_state, _ = tiny
    state = new_state()
    eval_step = jit_eval_step(make_eval_step(model), mesh=mesh)
    batch = _batches(1)[0]
    full = jax.device_get(eval_step(state, parallel.shard_batch(batch, mesh)))
    mask = np.array([1.0] * 10 + [0.0] * 6, np.float32)
    half = jax.device_get(eval_step(state, parallel.shard_batch({**batch, "mask": mask}, mesh)))
    assert full["count"] == 16 and half["count"] == 10
    logits = model.apply(state.variables(), batch["image"][:10], train=False)
    np.testing.assert_allclose(
        half["correct"], np.sum(np.argmax(logits, -1) == batch["label"][:10]), atol=0
    )
    np.testing.assert_allclose(
        half["loss_sum"] / 10,
        cross_entropy(logits, batch["label"][:10]),
        rtol=1e-5,
    )


def test_cross_entropy_label_smoothing_matches_definition():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1])
    eps = 0.1
    targets = (1 - eps) * jax.nn.one_hot(labels, 3) + eps / 3
    expected = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))
    np.testing.assert_allclose(
        cross_entropy(logits, labels, label_smoothing=eps), expected, rtol=1e-6
    )
    np.testing.assert_allclose(accuracy(logits, labels), 0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(logits, labels, label_smoothing=1.0)


def test_train_step_reduces_loss_on_fixed_batch(tiny):
    _, mesh, new_state, step = tiny
    state = new_state()
    batch = parallel.shard_batch(_batches(1)[0], mesh)
    first = None
    for _ in range(15):
        state, metrics = step(state, batch)
        first = metrics["loss"] if first is None else first
    assert float(metrics["loss"]) < 0.5 * float(first)
