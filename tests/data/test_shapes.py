"""Tests for archjax/data/shapes.py: the procedural generator behind the "shapes" dataset."""

import time

import numpy as np
import pytest

from archjax.data.image import resize_bilinear
from archjax.data.shapes import SHAPE_KINDS, generate_shapes


def _generate(num_examples, image_size=16, **kwargs):
    kwargs = {"num_classes": 10, "channels": 1, "seed": 0, "stream": 0, **kwargs}
    return generate_shapes(num_examples, image_size=image_size, **kwargs)


@pytest.mark.parametrize("kind", list(SHAPE_KINDS))
def test_kinds_fill_part_of_the_unit_box(kind):
    sdf = SHAPE_KINDS[kind]
    # Nothing reaches past the declared extent of 1.1 radii.
    angles = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    assert np.all(sdf(1.15 * np.cos(angles), 1.15 * np.sin(angles)) > 0)
    # A sizeable, but not total, part of the box around the shape is inside it.
    grid = np.linspace(-1.1, 1.1, 89)
    inside = (sdf(grid[None, :], grid[:, None]) < 0).mean()
    assert 0.1 < inside < 0.7
    if kind in ("ring", "frame"):
        assert sdf(np.float64(0.0), np.float64(0.0)) > 0  # hollow


def test_kinds_have_different_silhouettes():
    grid = np.linspace(-1.1, 1.1, 45)
    masks = [sdf(grid[None, :], grid[:, None]) < 0 for sdf in SHAPE_KINDS.values()]
    for i, a in enumerate(masks):
        for b in masks[i + 1 :]:
            assert (a != b).mean() > 0.05


def test_smaller_datasets_are_prefixes():
    # 300 crosses a chunk boundary (chunks hold 260 examples with 10 classes).
    small_images, small_labels = _generate(300)
    large_images, large_labels = _generate(700)
    np.testing.assert_array_equal(small_images, large_images[:300])
    np.testing.assert_array_equal(small_labels, large_labels[:300])


def test_every_block_of_num_classes_holds_each_class_once():
    _, labels = _generate(70, num_classes=7)
    for block in labels.reshape(10, 7):
        assert sorted(block) == list(range(7))


def test_scenes_do_not_depend_on_resolution():
    low_images, low_labels = _generate(200, image_size=16)
    high_images, high_labels = _generate(200, image_size=64)
    np.testing.assert_array_equal(low_labels, high_labels)
    # The same scene at 64 px, downsampled, looks like the 16 px render (up to pixel noise),
    # and much more so than a different scene does.
    down = resize_bilinear(high_images, 16, 16)
    same = np.abs(down - low_images).mean()
    shuffled = np.abs(down - np.roll(low_images, 1, axis=0)).mean()
    assert same < 0.25 * shuffled


def test_streams_and_seeds_differ():
    base, _ = _generate(20)
    for other in (_generate(20, stream=1)[0], _generate(20, seed=1)[0]):
        assert not np.array_equal(base, other)


def test_colour_images_use_all_channels():
    images, _ = _generate(50, channels=3)
    assert images.shape == (50, 16, 16, 3)
    assert not np.array_equal(images[..., 0], images[..., 1])


def test_low_resolution_is_not_linearly_separable():
    # A nearest-class-mean classifier is near chance (10%): position, size, rotation and
    # polarity vary, so a model has to learn shape rather than a template.
    train_images, train_labels = _generate(2000, image_size=8)
    test_images, test_labels = _generate(500, image_size=8, stream=1)
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32)
    centroids = np.stack([flat(train_images)[train_labels == k].mean(0) for k in range(10)])
    distances = ((flat(test_images)[:, None] - centroids[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == test_labels).mean() < 0.25


def test_generation_is_fast():
    # Vectorised rendering: 10k 32 px images take about a second; a per-image loop, far longer.
    start = time.perf_counter()
    images, _ = _generate(10_000, image_size=32)
    assert images.shape == (10_000, 32, 32, 1)
    assert time.perf_counter() - start < 10
