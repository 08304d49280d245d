"""Datasets that need no download: scikit-learn's digits and procedurally generated shapes.

Both live entirely in memory as uint8 arrays, built once per configuration and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from archjax.data import image as image_lib
from archjax.data import shapes as shapes_lib
from archjax.data.base import Dataset

SPLITS = ("train", "test")

# Digits: a stratified 80/20 split drawn once with a fixed seed. Per class, round(20%) of the
# examples go to test, which gives 1438 train and 359 test examples out of 1797.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0
_DIGITS_DEFAULT_SIZE = 16

_SHAPES_DEFAULT_SIZE = 32
# Normalisation statistics come from this many leading train examples, so they are the same
# for every split and every `num_examples` (data-size sweeps keep one normalisation). They
# are measured at no more than 32 px, where they have converged to within 1% in std, to keep
# the cost under a second at any resolution.
_SHAPES_STATS_EXAMPLES = 4096
_SHAPES_STATS_MAX_SIZE = 32
_SHAPES_STREAMS = {"train": 0, "test": 1}


class ArraySource:
    """Grain random-access source over in-memory arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.labels[index])}

    def __repr__(self) -> str:
        return f"ArraySource(images={self.images.shape}, labels={self.labels.shape})"


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    """Raises ValueError naming the split and the allowed ones."""
    if split not in allowed:
        raise ValueError(f"Unknown split {split!r} for dataset {name!r}; allowed: {list(allowed)}.")


def _check_int(name: str, key: str, value, low: int, high: int | None = None) -> int:
    """Returns value if it is an int in [low, high], else raises ValueError naming the key."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"Dataset {name!r}: {key} must be an integer {allowed}, got {value!r}.")
    return int(value)


@functools.cache
def _digits_split_indices() -> dict[str, np.ndarray]:
    """Returns sorted example indices of each digits split (stratified, fixed seed)."""
    _, labels = _digits_raw()
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    test = []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[: round(_DIGITS_TEST_FRACTION * len(members))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """Returns all 1797 digits as float32 [N, 8, 8, 1] in [0, 1] and int32 labels."""
    from sklearn.datasets import load_digits  # Imported lazily: sklearn takes ~1 s to import.

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[..., None] / 16.0  # pixel values are 0..16
    return images, bunch.target.astype(np.int32)


@functools.lru_cache(maxsize=8)
def _digits_images(image_size: int) -> np.ndarray:
    """Returns all digits resized to image_size, as uint8 [N, S, S, 1]."""
    images, _ = _digits_raw()
    resized = image_lib.resize_bilinear(images, image_size, image_size)
    resized = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    resized.flags.writeable = False  # shared by every Dataset built from the cache
    return resized


def load_digits(
    split: str, *, image_size: int | None = None, data_dir: str | None = None
) -> Dataset:
    """Loads a split of scikit-learn's 8x8 handwritten digits (10 classes, grey).

    Args:
      split: "train" (1438 examples) or "test" (359 examples).
      image_size: side of the (square) output images, >= 8; default 16. Resized bilinearly.
      data_dir: ignored; the data ships with scikit-learn.

    Returns:
      The split as a `Dataset`; mean/std are those of the train split at this size.
    """
    del data_dir
    _check_split("digits", split, SPLITS)
    image_size = _DIGITS_DEFAULT_SIZE if image_size is None else image_size
    size = _check_int("digits", "image_size", image_size, 8)
    images = _digits_images(size)
    _, labels = _digits_raw()
    indices = _digits_split_indices()
    mean, std = image_lib.channel_stats(images[indices["train"]])
    rows = indices[split]
    return Dataset(
        name="digits",
        split=split,
        source=ArraySource(images[rows], labels[rows]),
        num_classes=10,
        image_shape=(size, size, 1),
        mean=mean,
        std=std,
    )


# Two entries: the train and test split of the configuration in use.
@functools.lru_cache(maxsize=2)
def _shapes_arrays(num_examples, image_size, num_classes, channels, seed, stream):
    """Cached `generate_shapes`; arrays are marked read-only because they are shared."""
    images, labels = shapes_lib.generate_shapes(
        num_examples,
        image_size=image_size,
        num_classes=num_classes,
        channels=channels,
        seed=seed,
        stream=stream,
    )
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=64)
def _shapes_stats(image_size, num_classes, channels, seed):
    """Channel mean/std of the first train examples of a configuration."""
    reference, _ = shapes_lib.generate_shapes(
        _SHAPES_STATS_EXAMPLES,
        image_size=min(image_size, _SHAPES_STATS_MAX_SIZE),
        num_classes=num_classes,
        channels=channels,
        seed=seed,
        stream=_SHAPES_STREAMS["train"],
    )
    return image_lib.channel_stats(reference)


def load_shapes(
    split: str,
    *,
    image_size: int | None = None,
    data_dir: str | None = None,
    num_examples: int = 10_000,
    num_classes: int = len(shapes_lib.SHAPE_KINDS),
    channels: int = 3,
    seed: int = 0,
) -> Dataset:
    """Loads a split of the procedural shapes dataset (see `archjax.data.shapes`).

    Train and test are independent streams of the same seed, so they never share an image.
    A smaller `num_examples` gives a prefix of a larger one, and changing `image_size` renders
    the same scenes at another resolution, which is what data-size and resolution sweeps need.

    Args:
      split: "train" or "test".
      image_size: side of the square images in pixels, >= 4; default 32.
      data_dir: ignored; the data are generated in memory.
      num_examples: number of examples in this split.
      num_classes: number of shape kinds, in [2, 10]: disk, square, triangle, cross, ring,
        frame, star, half_disk, ellipse, corner (in this order).
      channels: 1 (grey) or 3 (colour).
      seed: base seed of the generator.

    Returns:
      The split as a `Dataset`; mean/std are measured on the first 4096 train examples.
    """
    del data_dir
    _check_split("shapes", split, SPLITS)
    image_size = _SHAPES_DEFAULT_SIZE if image_size is None else image_size
    size = _check_int("shapes", "image_size", image_size, 4)
    num_examples = _check_int("shapes", "num_examples", num_examples, 1)
    num_classes = _check_int("shapes", "num_classes", num_classes, 2, len(shapes_lib.SHAPE_KINDS))
    if channels not in (1, 3):
        raise ValueError(f"Dataset 'shapes': channels must be 1 or 3, got {channels!r}.")
    seed = _check_int("shapes", "seed", seed, 0)
    config = (size, num_classes, channels, seed)
    images, labels = _shapes_arrays(num_examples, *config, _SHAPES_STREAMS[split])
    mean, std = _shapes_stats(*config)
    return Dataset(
        name="shapes",
        split=split,
        source=ArraySource(images, labels),
        num_classes=num_classes,
        image_shape=(size, size, channels),
        mean=mean,
        std=std,
    )
