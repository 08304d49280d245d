"""Checkpointer: save -> restore is the identity, with clear errors otherwise."""

import os

import chex
import jax
import optax
import pytest

import archjax.models as models
from archjax import parallel
from archjax import train as T
from archjax.checkpoint import Checkpointer, CheckpointError

INPUT = (1, 8, 8, 1)


@pytest.fixture(scope="module")
def setup():
    model = models.create("resnet8", num_classes=10, width_multiplier=0.25)
    tx = optax.adam(1e-3)
    mesh = parallel.make_mesh()
    state = T.create_train_state(model, tx, rng=jax.random.key(3), input_shape=INPUT, mesh=mesh)
    # Distinct values in every leaf (moments and BN statistics start at 0/1), so
    # that a restore mixing up leaves could not pass.
    leaves, treedef = jax.tree.flatten(state)
    leaves = [x + i + 1 for i, x in enumerate(leaves)]
    return model, tx, mesh, jax.tree.unflatten(treedef, leaves)


def test_save_restore_is_identity(setup, tmp_path):
    model, tx, mesh, state = setup
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        assert ckpt.save(1, state, data_state={"epoch": 2, "pos": [1, 2]})
        ckpt.wait_until_finished()
        target = T.abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh)
    # A fresh Checkpointer, as in a resumed run, reads what another one wrote.
    with Checkpointer(tmp_path) as ckpt:
        restored, data_state = ckpt.restore(target)
    assert isinstance(restored, T.TrainState)
    chex.assert_trees_all_equal(restored, state)
    chex.assert_trees_all_equal_dtypes(restored, state)
    assert data_state == {"epoch": 2, "pos": [1, 2]}
    assert (
        jax.tree.leaves(restored.params)[0].sharding == jax.tree.leaves(target.params)[0].sharding
    )


def test_interval_keep_and_no_overwrite(setup, tmp_path):
    _, _, _, state = setup
    with Checkpointer(tmp_path, save_interval_steps=2, max_to_keep=2) as ckpt:
        saved = [ckpt.save(s, state) for s in range(7)]
        assert saved == [True, False, True, False, True, False, True]
        assert ckpt.save(5, state, force=True)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [5, 6]
        assert ckpt.latest_step() == 6
        # An existing step is never overwritten.
        assert not ckpt.save(6, state, force=True)


def test_restore_errors_name_the_problem(setup, tmp_path):
    model, tx, mesh, state = setup
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(FileNotFoundError, match="No checkpoint"):
            ckpt.restore(T.abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh))
        ckpt.save(1, state)
        ckpt.wait_until_finished()
        other = models.create("resnet8", num_classes=7, width_multiplier=0.25)
        with pytest.raises(CheckpointError, match=r"params/head/bias has shape \(10,\).*\(7,\)"):
            ckpt.restore(T.abstract_train_state(other, tx, input_shape=INPUT, mesh=mesh))
        with pytest.raises(CheckpointError, match="different state tree"):
            ckpt.restore(
                T.abstract_train_state(model, optax.sgd(0.1), input_shape=INPUT, mesh=mesh)
            )
        with pytest.raises(FileNotFoundError, match="step 9"):
            ckpt.restore(T.abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh), step=9)


@pytest.mark.parametrize("which", ["metadata", "array_data"])
def test_corrupt_checkpoint_raises_checkpoint_error(setup, tmp_path, which):
    model, tx, mesh, state = setup
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
    # Overwrite either the tree metadata or the array chunks (ocdbt "d/" files).
    for root, _, files in os.walk(tmp_path / "1" / "state"):
        for name in files:
            is_data = os.path.basename(root) == "d"
            if (which == "array_data") == is_data:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    target = T.abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh)
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.raises(
            CheckpointError, match=r"/1 is unreadable or corrupt|Could not read checkpoint .*/1"
        ),
    ):
        ckpt.restore(target)
