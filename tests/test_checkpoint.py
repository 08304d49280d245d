"""Checkpointer: save -> restore is the identity (on any mesh), bad checkpoints are skipped."""

import json
import os
from typing import Any

import chex
import flax
import jax
import numpy as np
import optax
import pytest

import archjax.models as models
from archjax import parallel
from archjax.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointWarning,
    checksums,
    claim_directory,
)
from archjax.train import TrainState, abstract_train_state, create_train_state, state_sharding

INPUT = (1, 8, 8, 1)


@pytest.fixture(scope="module")
def setup():
    model = models.create("resnet8", num_classes=10, width_multiplier=0.25)
    tx = optax.adam(1e-3)
    mesh = parallel.make_mesh()
    state = create_train_state(model, tx, rng=jax.random.key(3), input_shape=INPUT, mesh=mesh)
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
        target = abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh)
    # A fresh Checkpointer, as in a resumed run, reads what another one wrote.
    with Checkpointer(tmp_path) as ckpt:
        restored, data_state = ckpt.restore(target)
    assert isinstance(restored, TrainState)
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
            ckpt.restore(abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh))
        ckpt.save(1, state)
        ckpt.wait_until_finished()
        other = models.create("resnet8", num_classes=7, width_multiplier=0.25)
        with pytest.raises(CheckpointError, match=r"params/head/bias has shape \(10,\).*\(7,\)"):
            ckpt.restore(abstract_train_state(other, tx, input_shape=INPUT, mesh=mesh))
        with pytest.raises(CheckpointError, match="different state tree"):
            ckpt.restore(abstract_train_state(model, optax.sgd(0.1), input_shape=INPUT, mesh=mesh))
        with pytest.raises(FileNotFoundError, match="step 9"):
            ckpt.restore(abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh), step=9)


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
    target = abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh)
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.raises(
            CheckpointError, match=r"/1 is unreadable or corrupt|Could not read checkpoint .*/1"
        ),
    ):
        ckpt.restore(target)


def _abstract(model, tx, mesh, rules=None):
    return abstract_train_state(model, tx, input_shape=INPUT, mesh=mesh, rules=rules)


def test_fsdp_checkpoint_restores_on_four_and_one_device(setup, tmp_path):
    """Acceptance item 4: written FSDP-sharded on 8 devices, read on 4 and on 1."""
    model, tx, _, state = setup
    rules = parallel.ShardingRules(fsdp_min_size=0)
    mesh8 = parallel.make_mesh(shape={"fsdp": 8})
    sharded = jax.device_put(state, state_sharding(state, mesh8, rules))
    kernel = max(jax.tree.leaves(sharded.params), key=lambda x: x.size)
    assert "fsdp" in kernel.sharding.spec, kernel.sharding
    assert kernel.addressable_shards[0].data.size == kernel.size // 8
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, sharded)
    for devices, shape in [(jax.devices()[:4], {"fsdp": 4}), (jax.devices()[:1], None)]:
        mesh = parallel.make_mesh(devices=devices, shape=shape)
        with Checkpointer(tmp_path) as ckpt:
            restored, _ = ckpt.restore(_abstract(model, tx, mesh, rules))
        chex.assert_trees_all_equal(restored, state)
        leaf = max(jax.tree.leaves(restored.params), key=lambda x: x.size)
        assert set(leaf.sharding.device_set) == set(devices)


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


@pytest.mark.parametrize("damage", ["truncate", "checksum"])
def test_corrupt_latest_falls_back_to_previous_and_keeps_it(setup, tmp_path, damage):
    """Acceptance item 5: a bad latest checkpoint -> warning naming its step, the
    previous step restored, nothing deleted (the bad one is moved to 3.corrupt)."""
    model, tx, mesh, state = setup
    later = jax.tree.map(lambda x: x + 1, state)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(2, state)
        ckpt.save(3, later)
    if damage == "truncate":  # half of every array-data file of step 3
        for root, _, names in os.walk(tmp_path / "3" / "state"):
            for name in names:
                if os.path.basename(root) == "d":
                    path = os.path.join(root, name)
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
        reason = "unreadable|Could not read"
    else:  # values changed after writing, files still readable: only checksums notice
        sums = tmp_path / "3" / "checksums.json"
        content = json.loads(sums.read_text())
        content["params/head/bias"] += 1
        sums.write_text(json.dumps(content))
        reason = r"differ from the checksums.*params/head/bias"
    before = _files(tmp_path)
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.warns(CheckpointWarning, match=rf"step 3 .*({reason}).*trying step 2"),
    ):
        restored, _ = ckpt.restore(_abstract(model, tx, mesh))
        assert ckpt.all_steps() == [2]
    chex.assert_trees_all_equal(restored, state)
    after = _files(tmp_path)
    assert [f.replace("3.corrupt", "3", 1) for f in after] == before  # moved, not deleted


def test_keeps_last_n_and_best_by_metric(setup, tmp_path):
    _, _, _, state = setup
    accuracy = {1: 0.9, 2: 0.1, 3: 0.2, 4: 0.3, 5: 0.4}
    with Checkpointer(
        tmp_path, max_to_keep=2, best_metric="accuracy", keep_best=1, async_save=False
    ) as ckpt:
        for step, acc in accuracy.items():
            ckpt.save(step, state, metrics={"accuracy": acc}, config={"model": "resnet8"})
        assert ckpt.all_steps() == [1, 4, 5]
        assert ckpt.metadata(5)["config"] == {"model": "resnet8"}
        assert ckpt.metadata(5)["metrics"] == {"accuracy": 0.4}
    with pytest.raises(ValueError, match="keep_best=1 needs .* best_metric"):
        Checkpointer(tmp_path, keep_best=1)


def test_never_writes_into_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"Refusing to write checkpoints into .*notes.txt"):
        Checkpointer(tmp_path)
    with pytest.raises(ValueError, match=r"Refusing to write into .*not an archjax directory"):
        claim_directory(tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]
    own = claim_directory(tmp_path / "run")  # new: created and marked
    assert claim_directory(own) == own  # ours: accepted again


def test_checksums_do_not_depend_on_sharding(setup):
    _, _, _, state = setup
    mesh = parallel.make_mesh(shape={"fsdp": 8})
    sharded = jax.device_put(
        state, state_sharding(state, mesh, parallel.ShardingRules(fsdp_min_size=0))
    )
    host = jax.device_get(state)
    assert checksums(sharded) == checksums(state) == checksums(host)
    changed = jax.tree.map(np.array, host)  # copies
    bias = changed.params["head"]["bias"]
    bias[0] = np.nextafter(bias[0], np.float32(2.0) + bias[0])  # one ulp
    diff = {k for k, v in checksums(changed).items() if v != checksums(host)[k]}
    assert diff == {"params/head/bias"}


@flax.struct.dataclass
class _StateBeforeCollections:
    """TrainState as checkpoints before ``TrainState.collections`` wrote it."""

    step: Any
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Any


def test_checkpoint_from_before_a_new_empty_field_restores(setup, tmp_path):
    model, tx, mesh, state = setup
    old = _StateBeforeCollections(
        step=state.step,
        params=state.params,
        batch_stats=state.batch_stats,
        opt_state=state.opt_state,
        rng=state.rng,
    )
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, old)
    with Checkpointer(tmp_path) as ckpt:
        restored, _ = ckpt.restore(_abstract(model, tx, mesh))
    assert isinstance(restored, TrainState) and restored.collections == {}
    chex.assert_trees_all_equal(restored, state)


def test_corrupt_checkpoint_reason_is_the_innermost_cause_without_library_reprs():
    from archjax.checkpoint.manager import _reason

    try:
        try:
            raise OSError("OUT_OF_RANGE: read past end of file d/abc\nmore detail")
        except OSError as inner:
            raise ValueError(
                "Error reading spec <bound method pybind11_detail_function_record.spec of x>"
            ) from inner
    except ValueError as outer:
        reason = _reason(outer)
    assert reason == "OSError: OUT_OF_RANGE: read past end of file d/abc"
    assert "pybind11" not in _reason(ValueError("spec <bound method pybind11_x.spec of y>"))
