"""Tests for archjax/data/pipeline.py: order, coverage, sharding, augmentation, resume, eval."""

import json
import time
from collections import Counter

import jax
import numpy as np
import pytest

from archjax.data import eval_batches, train_iterator


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _labels(batches):
    return [int(label) for batch in batches for label in batch["label"]]


def _unit(raw):
    """What the pipeline makes of uint8 pixels when mean=0 and std=1."""
    return raw.astype(np.float32) / 255


def _same(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6)


def _train(ds, **kwargs):
    kwargs = {"seed": 0, "shard_index": 0, "shard_count": 1, **kwargs}
    return train_iterator(ds, **kwargs)


def test_batch_shapes_and_dtypes(indexed_dataset):
    ds = indexed_dataset(40, size=5, channels=3)
    batch = next(_train(ds, batch_size=8, random_crop_pad=1, random_flip=True))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, 5, 5, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32


def test_default_shards_come_from_jax(indexed_dataset):
    # A single process: index 0 of 1, so the per-process batch is the global batch.
    ds = indexed_dataset(16)
    assert next(train_iterator(ds, batch_size=16, seed=0))["label"].shape == (16,)
    assert sum(b["mask"].sum() for b in eval_batches(ds, batch_size=4)) == 16


def test_images_are_normalised_with_dataset_statistics(indexed_dataset):
    ds = indexed_dataset(8)
    batch = next(_train(ds, batch_size=8))
    raw = ds.source.images[batch["label"]]
    np.testing.assert_allclose(batch["image"], _unit(raw), atol=1e-6)


def test_shuffle_is_reproducible_and_depends_on_seed(indexed_dataset):
    ds = indexed_dataset(64)
    first = _labels(_take(_train(ds, batch_size=8, seed=3), 8))
    again = _labels(_take(_train(ds, batch_size=8, seed=3), 8))
    other = _labels(_take(_train(ds, batch_size=8, seed=4), 8))
    assert first == again
    assert first != other
    assert first != list(range(64))


def test_each_epoch_is_a_fresh_permutation(indexed_dataset):
    ds = indexed_dataset(48)
    labels = _labels(_take(_train(ds, batch_size=8), 3 * 6))
    epochs = [labels[i * 48 : (i + 1) * 48] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(48))
    assert epochs[0] != epochs[1] != epochs[2]


def test_remainder_is_dropped_inside_each_epoch(indexed_dataset):
    # 50 examples, batches of 8: 6 batches (48 examples) per epoch, none repeated in an epoch.
    ds = indexed_dataset(50)
    labels = _labels(_take(_train(ds, batch_size=8), 12))
    for epoch in (labels[:48], labels[48:]):
        assert len(set(epoch)) == 48
    assert set(labels[:48]) != set(labels[48:])  # different leftovers each epoch


def test_shards_are_disjoint_and_cover_the_data(indexed_dataset):
    ds = indexed_dataset(48)
    shards = []
    for index in range(4):
        it = train_iterator(ds, batch_size=16, seed=0, shard_index=index, shard_count=4)
        batches = _take(it, 3)  # 12 examples per shard, 4 per process batch
        assert all(b["label"].shape == (4,) for b in batches)
        shards.append(set(_labels(batches)))
        assert len(shards[-1]) == 12
    assert set().union(*shards) == set(range(48))
    assert sum(len(s) for s in shards) == 48


def test_batch_size_must_divide_by_shard_count(indexed_dataset):
    ds = indexed_dataset(48)
    with pytest.raises(ValueError, match=r"batch_size 10.*shard_count 4"):
        train_iterator(ds, batch_size=10, seed=0, shard_index=0, shard_count=4)
    with pytest.raises(ValueError, match=r"batch_size 10.*shard_count 4"):
        eval_batches(ds, batch_size=10, shard_index=0, shard_count=4)


def test_invalid_arguments_raise(indexed_dataset):
    ds = indexed_dataset(10)
    with pytest.raises(ValueError, match="shard_index"):
        _train(ds, batch_size=4, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="fewer than one per-process batch"):
        _train(ds, batch_size=16)
    with pytest.raises(ValueError, match="seed"):
        _train(ds, batch_size=4, seed=-1)
    with pytest.raises(ValueError, match="random_crop_pad"):
        _train(ds, batch_size=4, random_crop_pad=-1)
    with pytest.raises(ValueError, match="device_prefetch"):
        _train(ds, batch_size=4, device_put=jax.device_put, device_prefetch=0)


def _crops(image, pad):
    """All crops of `image` zero-padded by `pad`, keyed by (top, left)."""
    height, width, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return {
        (top, left): padded[top : top + height, left : left + width]
        for top in range(2 * pad + 1)
        for left in range(2 * pad + 1)
    }


def test_random_crop_moves_images_within_the_padding(indexed_dataset):
    ds = indexed_dataset(32, size=6)
    plain = _take(_train(ds, batch_size=8), 4)
    cropped = _take(_train(ds, batch_size=8, random_crop_pad=2), 4)
    assert _labels(plain) == _labels(cropped)  # augmentation does not change the order
    offsets = Counter()
    for batch in cropped:
        assert batch["image"].shape == (8, 6, 6, 2)
        for image, label in zip(batch["image"], batch["label"], strict=True):
            crops = _crops(_unit(ds.source.images[label]), 2)
            matches = [k for k, crop in crops.items() if _same(crop, image)]
            assert matches, "not a crop of the padded image"
            offsets[matches[0]] += 1
    assert len(offsets) > 5  # many different offsets, not a constant shift


def test_random_flip_mirrors_about_half(indexed_dataset):
    ds = indexed_dataset(64, size=5)
    flips = 0
    for batch in _take(_train(ds, batch_size=16, random_flip=True), 4):
        for image, label in zip(batch["image"], batch["label"], strict=True):
            original = _unit(ds.source.images[label])
            if _same(image, original[:, ::-1]):
                flips += 1
            else:
                np.testing.assert_allclose(image, original, atol=1e-6)
    assert 16 <= flips <= 48


def test_augmentation_changes_between_epochs(indexed_dataset):
    ds = indexed_dataset(16, size=8)
    batches = _take(_train(ds, batch_size=16, random_crop_pad=3, random_flip=True), 2)
    by_label = [dict(zip(b["label"].tolist(), b["image"], strict=True)) for b in batches]
    changed = sum(not np.array_equal(by_label[0][k], by_label[1][k]) for k in range(16))
    assert changed > 8


def test_checkpoint_resumes_exactly(indexed_dataset):
    ds = indexed_dataset(40)

    def make():
        return _train(ds, batch_size=8, seed=7, random_crop_pad=2, random_flip=True)

    uninterrupted = _take(make(), 10)
    it = make()
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    resumed = make()
    resumed.set_state(state)
    # 7 more batches cross the epoch boundary (5 batches per epoch).
    for expected, got in zip(uninterrupted[3:], _take(resumed, 7), strict=True):
        np.testing.assert_array_equal(expected["label"], got["label"])
        np.testing.assert_array_equal(expected["image"], got["image"])


def test_device_prefetch_yields_the_same_batches_on_the_device(indexed_dataset):
    ds = indexed_dataset(40)
    kwargs = dict(batch_size=8, seed=3, random_crop_pad=1, random_flip=True)
    host = _take(_train(ds, **kwargs), 7)
    on_device = _take(_train(ds, **kwargs, device_put=jax.device_put), 7)
    for expected, got in zip(host, on_device, strict=True):
        assert isinstance(got["image"], jax.Array)
        np.testing.assert_array_equal(expected["label"], got["label"])
        np.testing.assert_array_equal(expected["image"], got["image"])


@pytest.mark.parametrize("ahead", [1, 3])
def test_checkpoint_while_batches_are_prefetched_resumes_exactly(indexed_dataset, ahead):
    """The state describes the batches consumed, not those waiting in the device buffer."""
    ds = indexed_dataset(40)
    transferred = []

    def put(batch):
        transferred.append(int(batch["label"][0]))
        return jax.device_put(batch)

    def make(**kw):
        return _train(ds, batch_size=8, seed=7, random_crop_pad=2, random_flip=True, **kw)

    uninterrupted = _take(make(), 10)
    it = make(device_put=put, device_prefetch=ahead)
    _take(it, 3)
    deadline = time.time() + 30  # let the background thread fill the buffer
    while len(transferred) < 3 + ahead and time.time() < deadline:
        time.sleep(0.01)
    assert len(transferred) >= 3 + ahead  # batches 4.. are prefetched when the state is taken
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    resumed = make(device_put=jax.device_put, device_prefetch=ahead)
    resumed.set_state(state)
    for expected, got in zip(uninterrupted[3:], _take(resumed, 7), strict=True):
        np.testing.assert_array_equal(expected["label"], got["label"])
        np.testing.assert_array_equal(expected["image"], got["image"])


def test_eval_covers_every_example_once_with_padding(indexed_dataset):
    ds = indexed_dataset(50)
    batches = list(eval_batches(ds, batch_size=16, shard_index=0, shard_count=1))
    assert len(batches) == 4
    for batch in batches:
        assert batch["image"].shape == (16, 6, 6, 2) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.sum() == 50 and mask[50:].sum() == 0
    np.testing.assert_array_equal(labels[:50], np.arange(50))  # deterministic, in order
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_allclose(images[:50], _unit(ds.source.images), atol=1e-6)
    assert not images[50:].any()


def test_sharded_eval_covers_every_example_once(indexed_dataset):
    ds = indexed_dataset(50)
    seen = Counter()
    counts = set()
    for index in range(3):  # shards of 17, 17 and 16 examples, 4 per process batch
        batches = list(eval_batches(ds, batch_size=12, shard_index=index, shard_count=3))
        counts.add(len(batches))
        for batch in batches:
            assert batch["image"].shape[0] == 4
            seen.update(batch["label"][batch["mask"] == 1].tolist())
    assert counts == {5}  # every process steps the same number of times
    assert seen == Counter(range(50))
