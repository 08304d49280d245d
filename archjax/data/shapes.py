"""Procedural images of geometric shapes, rendered with vectorised numpy.

Each shape kind is a signed distance function (SDF) in the shape's own frame, where the
shape has a "radius" of about 1. An image draws a kind (the label), a centre, a radius, a
rotation, a background colour with a linear gradient, a foreground colour that differs
from it by a random contrast, and Gaussian pixel noise. Edge pixels get fractional coverage
from the SDF (analytic antialiasing), so an image rendered at low resolution looks like a
downsampled high-resolution one rather than a jagged mask.

Determinism and scaling: examples come in chunks of a fixed size, and chunk `j` of a stream
is drawn from its own generator seeded by `(seed, stream, j)`. Hence `num_examples=n` is a
prefix of `num_examples=m > n`, and the scene parameters (kind, position, size, rotation,
colours) do not depend on `image_size`; only the pixel noise does. Labels are balanced: every
aligned block of `num_classes` consecutive examples holds each class once.
"""

from __future__ import annotations

import numpy as np

# Examples per chunk, before rounding up to a multiple of num_classes.
_CHUNK = 256
# Images rendered at once are capped at about this many pixels to bound temporary memory.
_RENDER_PIXELS = 1 << 20


def _length(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v)


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    """Exact SDF of an axis-aligned box centred at the origin."""
    qu, qv = np.abs(u) - half_u, np.abs(v) - half_v
    outside = _length(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0)


def _disk(u, v):
    return _length(u, v) - 1.0


def _square(u, v):
    return _box(u, v, 0.78, 0.78)


def _triangle(u, v):
    # Equilateral, circumradius 1.1: intersection of three half-planes with apothem 0.55.
    angles = np.deg2rad([-90.0, 30.0, 150.0])
    edges = [np.cos(a) * u + np.sin(a) * v for a in angles]
    return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.55


def _cross(u, v):
    return np.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95))


def _ring(u, v):
    return np.abs(_length(u, v) - 0.72) - 0.28


def _frame(u, v):
    return np.abs(_box(u, v, 0.62, 0.62)) - 0.2


def _star(u, v):
    # Five points: the boundary radius moves linearly between 0.45 (valleys) and 1 (tips).
    turn = np.arctan2(v, u) * (5.0 / (2.0 * np.pi))
    to_tip = np.abs(turn - np.round(turn))  # 0 at a tip, 0.5 in a valley
    boundary = 1.0 - 1.1 * to_tip
    # The factor approximates the slant of the edges, so the value is close to a distance.
    return 0.6 * (_length(u, v) - boundary)


def _half_disk(u, v):
    v = v + 0.42  # centre the half disk's bounding box on the origin
    return np.maximum(_length(u, v) - 1.0, -v)


def _ellipse(u, v):
    # Approximate SDF of an ellipse with semi-axes (1, 0.5) (first-order correction).
    k0 = _length(u, v / 0.5)
    k1 = _length(u, v / 0.25)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _corner(u, v):
    return np.minimum(_box(u + 0.53, v, 0.25, 0.78), _box(u, v + 0.53, 0.78, 0.25))


# Ordered so that small `num_classes` values pick the most distinct kinds first.
SHAPE_KINDS = {
    "disk": _disk,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "frame": _frame,
    "star": _star,
    "half_disk": _half_disk,
    "ellipse": _ellipse,
    "corner": _corner,
}
_SDFS = tuple(SHAPE_KINDS.values())
# Largest distance of any shape's boundary from its centre, in units of the radius.
_EXTENT = 1.1


def _draw_scenes(rng: np.random.Generator, size: int, num_classes: int, channels: int):
    """Draws resolution-independent scene parameters for one chunk."""
    blocks = size // num_classes
    labels = np.argsort(rng.random((blocks, num_classes)), axis=1).reshape(-1)
    radius = rng.uniform(0.2, 0.42, size)  # fraction of the image side
    margin = _EXTENT * radius
    centre = rng.uniform(margin[:, None], 1.0 - margin[:, None], (size, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, size)
    background = rng.uniform(0.0, 1.0, (size, channels))
    contrast = rng.uniform(0.25, 0.5, (size, 1))
    sign = rng.choice([-1.0, 1.0], (size, channels))
    foreground = background + sign * contrast
    # Contrast <= 0.5, so flipping the sign always lands back inside [0, 1].
    outside = (foreground < 0.0) | (foreground > 1.0)
    foreground = np.where(outside, background - sign * contrast, foreground)
    gradient = rng.uniform(0.0, 0.2, size)[:, None] * _unit(rng.uniform(0, 2 * np.pi, size))
    noise_std = rng.uniform(0.02, 0.1, size)
    return dict(
        labels=labels,
        radius=radius,
        centre=centre,
        angle=angle,
        background=background,
        foreground=foreground,
        gradient=gradient,
        noise_std=noise_std,
    )


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _render(scenes: dict, noise: np.ndarray, image_size: int) -> np.ndarray:
    """Renders scenes [K] with pixel noise [K, S, S, C] into uint8 images [K, S, S, C]."""
    dtype = np.float32
    grid = ((np.arange(image_size) + 0.5) / image_size).astype(dtype)  # pixel centres in [0, 1]
    radius_px = (scenes["radius"] * image_size).astype(dtype)[:, None, None]
    dx = (grid[None, None, :] - scenes["centre"][:, 0, None, None].astype(dtype)) * image_size
    dy = (grid[None, :, None] - scenes["centre"][:, 1, None, None].astype(dtype)) * image_size
    cos, sin = (f(scenes["angle"]).astype(dtype)[:, None, None] for f in (np.cos, np.sin))
    u = (dx * cos + dy * sin) / radius_px
    v = (dy * cos - dx * sin) / radius_px
    dist = np.empty(u.shape, dtype)
    for kind in np.unique(scenes["labels"]):
        pick = scenes["labels"] == kind
        dist[pick] = _SDFS[kind](u[pick], v[pick])
    # Distance in pixels -> fraction of the pixel covered by the shape.
    coverage = np.clip(0.5 - dist * radius_px, 0.0, 1.0)[..., None]
    ramp = grid - 0.5
    slope_x, slope_y = (scenes["gradient"][:, i, None, None].astype(dtype) for i in (0, 1))
    shade = slope_x * ramp[None, None, :] + slope_y * ramp[None, :, None]
    background = scenes["background"].astype(dtype)[:, None, None, :] + shade[..., None]
    foreground = scenes["foreground"].astype(dtype)[:, None, None, :]
    image = background + coverage * (foreground - background)
    image += noise * scenes["noise_std"].astype(dtype)[:, None, None, None]
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _render_chunk(rng, scenes, count, image_size, channels):
    """Renders the first `count` scenes, a few at a time, drawing noise in order."""
    step = max(1, _RENDER_PIXELS // (image_size * image_size))
    parts = []
    for start in range(0, count, step):
        stop = min(start + step, count)
        part = {key: value[start:stop] for key, value in scenes.items()}
        noise = rng.standard_normal((stop - start, image_size, image_size, channels), np.float32)
        parts.append(_render(part, noise, image_size))
    return np.concatenate(parts)


def generate_shapes(
    num_examples: int,
    *,
    image_size: int,
    num_classes: int,
    channels: int,
    seed: int,
    stream: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Generates a deterministic set of shape images.

    Args:
      num_examples: number of images.
      image_size: side of the square images in pixels.
      num_classes: number of shape kinds used, taken in the order of `SHAPE_KINDS`.
      channels: 1 (grey) or 3 (colour).
      seed: base seed.
      stream: independent sub-stream of `seed` (e.g. 0 for train, 1 for test).

    Returns:
      (images uint8 [N, S, S, C], labels int32 [N]).

    Example:
      >>> images, labels = generate_shapes(
      ...     20, image_size=16, num_classes=4, channels=1, seed=0, stream=0)
      >>> images.shape, sorted(set(labels.tolist()))
      ((20, 16, 16, 1), [0, 1, 2, 3])
    """
    chunk = num_classes * -(-_CHUNK // num_classes)  # a whole number of label blocks
    images, labels = [], []
    for index in range(-(-num_examples // chunk)):
        rng = np.random.default_rng([seed, stream, index])
        # Parameters for the whole chunk are drawn even when it is cut short, so a shorter
        # dataset is exactly a prefix of a longer one.
        scenes = _draw_scenes(rng, chunk, num_classes, channels)
        count = min(chunk, num_examples - index * chunk)
        images.append(_render_chunk(rng, scenes, count, image_size, channels))
        labels.append(scenes["labels"][:count])
    if not images:
        return np.zeros((0, image_size, image_size, channels), np.uint8), np.zeros(0, np.int32)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)
