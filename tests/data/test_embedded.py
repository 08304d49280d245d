"""Tests for archjax/data/embedded.py: the digits and shapes datasets."""

from collections import Counter

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from archjax.data import eval_batches, get_dataset


def _all_images(ds):
    return np.stack([ds.source[i]["image"] for i in range(len(ds))])


def _all_labels(ds):
    return np.array([ds.source[i]["label"] for i in range(len(ds))])


def _pipeline_pixels(ds):
    """All real pixels of a split after eval normalisation, as [N*H*W, C]."""
    batches = list(eval_batches(ds, batch_size=256, shard_index=0, shard_count=1))
    images = np.concatenate([b["image"][b["mask"] == 1] for b in batches])
    assert len(images) == len(ds)
    return images.reshape(-1, ds.image_shape[-1]).astype(np.float64)


# --- digits ---------------------------------------------------------------------------------


def test_digits_split_sizes_and_shapes():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.image_shape == test.image_shape == (16, 16, 1)
    assert train.num_classes == 10
    example = train.source[0]
    assert example["image"].shape == (16, 16, 1) and example["image"].dtype == np.uint8
    assert isinstance(example["label"], int)


def test_digits_split_is_stratified_and_fixed():
    # Per class, round(20%) of the examples are test; the counts pin the split's definition.
    test_counts = np.bincount(_all_labels(get_dataset("digits", "test")), minlength=10)
    np.testing.assert_array_equal(test_counts, [36, 36, 35, 37, 36, 36, 36, 36, 35, 36])
    first = get_dataset("digits", "test", image_size=8)
    again = get_dataset("digits", "test", image_size=8)
    np.testing.assert_array_equal(_all_images(first), _all_images(again))


def test_digits_splits_partition_the_data():
    # At 8x8 no resize happens, so each example must be one of sklearn's, used exactly once.
    raw = sklearn_digits()
    expected = Counter(
        (np.rint(image * 255 / 16).astype(np.uint8).tobytes(), int(label))
        for image, label in zip(raw.images, raw.target, strict=True)
    )
    seen = Counter()
    for split in ("train", "test"):
        ds = get_dataset("digits", split, image_size=8)
        seen.update(
            (image.tobytes(), int(label))
            for image, label in zip(_all_images(ds), _all_labels(ds), strict=True)
        )
    assert seen == expected


@pytest.mark.parametrize("size", [8, 16, 32, 20])
def test_digits_resize_matches_jax(size):
    ds = get_dataset("digits", "train", image_size=size)
    assert ds.image_shape == (size, size, 1)
    images = _all_images(ds)
    assert images.shape == (1438, size, size, 1)
    # The same examples at 8x8 (no resize), resized by jax, match up to uint8 rounding.
    small = _all_images(get_dataset("digits", "train", image_size=8)).astype(np.float32)
    expected = jax.image.resize(small, (len(small), size, size, 1), "linear")
    assert np.abs(images - np.asarray(expected)).max() <= 1.01


def test_digits_rejects_small_images():
    with pytest.raises(ValueError, match="image_size"):
        get_dataset("digits", "train", image_size=4)


def test_digits_train_is_standardised_by_the_pipeline():
    train = get_dataset("digits", "train")
    pixels = _pipeline_pixels(train)
    np.testing.assert_allclose(pixels.mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(pixels.std(), 1.0, atol=1e-4)
    test = get_dataset("digits", "test")
    assert test.mean == train.mean and test.std == train.std  # test uses train statistics


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "channels"), [(8, 1), (24, 3)])
def test_shapes_honours_its_knobs(size, channels):
    ds = get_dataset(
        "shapes", "train", image_size=size, num_examples=60, num_classes=6, channels=channels
    )
    assert len(ds) == 60 and ds.num_classes == 6
    assert ds.image_shape == (size, size, channels)
    images = _all_images(ds)
    assert images.shape == (60, size, size, channels) and images.dtype == np.uint8
    assert len(ds.mean) == len(ds.std) == channels


def test_shapes_has_all_classes_balanced():
    labels = _all_labels(get_dataset("shapes", "train", num_examples=1000, image_size=8))
    np.testing.assert_array_equal(np.bincount(labels), [100] * 10)


def test_shapes_is_deterministic_and_seeded():
    def images(seed):
        ds = get_dataset("shapes", "test", num_examples=30, image_size=12, seed=seed)
        return _all_images(ds), _all_labels(ds)

    first, again, other = images(1), images(1), images(2)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_shapes_train_and_test_differ():
    kwargs = {"num_examples": 300, "image_size": 16}
    train = _all_images(get_dataset("shapes", "train", **kwargs))
    test = _all_images(get_dataset("shapes", "test", **kwargs))
    assert not {image.tobytes() for image in train} & {image.tobytes() for image in test}


def test_shapes_train_is_roughly_standardised():
    # Statistics come from the first 4096 train examples; a subset stays close to them.
    pixels = _pipeline_pixels(get_dataset("shapes", "train", num_examples=1024, image_size=8))
    assert np.all(np.abs(pixels.mean(axis=0)) < 0.05)
    assert np.all(np.abs(pixels.std(axis=0) - 1.0) < 0.05)


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_classes", 11), ("num_classes", 1), ("channels", 2), ("num_examples", 0), ("seed", -1)],
)
def test_shapes_rejects_bad_values(key, value):
    with pytest.raises(ValueError, match=key):
        get_dataset("shapes", "train", **{key: value})


def test_shapes_unknown_split():
    with pytest.raises(ValueError, match=r"'valid'.*\['train', 'test'\]"):
        get_dataset("shapes", "valid")
