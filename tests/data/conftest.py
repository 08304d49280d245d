"""Fixtures for the data tests: tiny in-memory datasets whose labels identify examples."""

from __future__ import annotations

import numpy as np
import pytest

from archjax.data import Dataset
from archjax.data.embedded import ArraySource


def _indexed_dataset(num_examples: int, *, size: int = 6, channels: int = 2, seed: int = 0):
    """Random uint8 images whose label is their index, so batches reveal what they hold.

    mean=0 and std=1 make every pipeline image exactly `uint8 / 255`.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, size, size, channels), dtype=np.uint8)
    return Dataset(
        name="indexed",
        split="train",
        source=ArraySource(images, np.arange(num_examples)),
        num_classes=num_examples,
        image_shape=(size, size, channels),
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
    )


@pytest.fixture
def indexed_dataset():
    """Factory: `indexed_dataset(n, size=6, channels=2, seed=0)` -> Dataset with labels 0..n-1."""
    return _indexed_dataset
