"""Tests for archjax/data/image.py: resizing and channel statistics."""

import jax
import numpy as np
import pytest

from archjax.data.image import channel_stats, resize, resize_bilinear


@pytest.mark.parametrize(("height", "width"), [(16, 16), (32, 5), (4, 4), (3, 11), (8, 11)])
def test_resize_bilinear_matches_jax(height, width):
    # jax.image.resize "linear" antialiases when shrinking; so must we.
    images = np.random.default_rng(0).random((3, 8, 11, 2), dtype=np.float32)
    expected = jax.image.resize(images, (3, height, width, 2), "linear")
    np.testing.assert_allclose(resize_bilinear(images, height, width), expected, atol=1e-5)


def test_resize_keeps_uint8_and_skips_same_size():
    image = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert resize(image, 7, 9) is image
    bigger = resize(image, 14, 18)
    assert bigger.dtype == np.uint8 and bigger.shape == (14, 18, 3)
    expected = np.asarray(jax.image.resize(image.astype(np.float32), (14, 18, 3), "linear"))
    assert np.abs(bigger - expected).max() <= 0.5 + 1e-3  # only rounding
    floats = resize(image.astype(np.float32) / 255, 4, 4)
    assert floats.dtype == np.float32 and floats.max() <= 1


def test_channel_stats_are_per_channel_on_unit_scale():
    images = np.zeros((2, 3, 3, 2), np.uint8)
    images[0, ..., 1] = 255  # channel 1: half the pixels at 1.0
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, (0.0, 0.5))
    assert std[0] > 0  # constant channels get a tiny std instead of zero
    np.testing.assert_allclose(std[1], 0.5)
