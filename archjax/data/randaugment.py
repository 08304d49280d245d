"""RandAugment in jax.numpy, run per image inside the (jitted) train step.

Cubuk et al., "RandAugment" (2020), as used by Bello et al., "Revisiting
ResNets" (ResNet-RS, 2021): each image gets ``num_layers`` operations drawn
uniformly from a fixed list, all at one global ``magnitude`` (a level on
TensorFlow's 0..10 scale; ResNet-RS uses 10-15, so values above 10 extrapolate).
Level-to-argument mappings follow the TF EfficientNet ``autoaugment.py``.

Implemented subset (11 of the 14 TF ops): Identity, AutoContrast, Rotate,
Solarize, Posterize, Contrast, Brightness, ShearX, ShearY, TranslateX,
TranslateY. Not implemented: Equalize, Color (saturation) and Sharpness.
Geometric ops sample bilinearly and fill with mid-gray (0.5) as TF fills 128.
Images are float ``[H, W, C]`` in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

_MAX_LEVEL = 10.0
OPS = (
    "identity",
    "auto_contrast",
    "rotate",
    "solarize",
    "posterize",
    "contrast",
    "brightness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def _signed(key, value):
    return jnp.where(jax.random.bernoulli(key), value, -value)


def _affine(image, matrix):
    """Samples ``image`` at ``matrix @ (row, col, 1)`` (output -> input), bilinear, gray fill."""
    h, w = image.shape[:2]
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    coords = jnp.stack([rows.ravel(), cols.ravel(), jnp.ones(h * w)])
    src = matrix @ coords

    def channel(c):
        return jax.scipy.ndimage.map_coordinates(c, [src[0], src[1]], order=1, cval=-1.0)

    out = jax.vmap(channel, in_axes=2, out_axes=1)(image).reshape(h, w, -1)
    return jnp.where(out < 0, 0.5, out)


def _centered(h, w, linear):
    """Affine map about the image centre from a 2x2 ``linear`` part."""
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - linear @ centre
    return jnp.concatenate([linear, offset[:, None]], axis=1)


def _apply(op: int, key: jax.Array, image: jax.Array, level: float) -> jax.Array:
    h, w = image.shape[:2]
    frac = level / _MAX_LEVEL

    def rotate(x):
        angle = jnp.deg2rad(_signed(key, frac * 30.0))
        c, s = jnp.cos(angle), jnp.sin(angle)
        return _affine(x, _centered(h, w, jnp.array([[c, -s], [s, c]])))

    def shear(axis):
        def f(x):
            amount = _signed(key, frac * 0.3)
            lin = jnp.eye(2).at[axis, 1 - axis].set(amount)
            return _affine(x, _centered(h, w, lin))

        return f

    def translate(axis):
        def f(x):
            shift = _signed(key, frac * 0.45 * (h if axis == 0 else w))
            m = jnp.concatenate([jnp.eye(2), jnp.zeros((2, 1))], axis=1).at[axis, 2].set(shift)
            return _affine(x, m)

        return f

    def auto_contrast(x):
        lo = jnp.min(x, axis=(0, 1), keepdims=True)
        hi = jnp.max(x, axis=(0, 1), keepdims=True)
        return jnp.where(hi > lo, (x - lo) / jnp.maximum(hi - lo, 1e-6), x)

    def solarize(x):
        threshold = frac  # TF: int(level / 10 * 256) on uint8 pixels
        return jnp.where(x >= threshold, 1.0 - x, x)

    def posterize(x):
        bits = jnp.clip(jnp.round(frac * 4.0), 1, 8).astype(jnp.int32)  # TF: int(level/10*4)
        shift = 8 - bits
        q = jnp.floor(x * 255.0).astype(jnp.int32)
        return ((q >> shift) << shift).astype(x.dtype) / 255.0

    def enhance(blend_with):
        def f(x):
            factor = 1.0 + _signed(key, frac * 0.9)  # TF: (level/10) * 1.8 + 0.1, in [0.1, 1.9]
            return jnp.clip(blend_with(x) + factor * (x - blend_with(x)), 0.0, 1.0)

        return f

    branches = [
        lambda x: x,
        auto_contrast,
        rotate,
        solarize,
        posterize,
        enhance(lambda x: jnp.full_like(x, jnp.mean(x))),  # contrast: towards the mean
        enhance(jnp.zeros_like),  # brightness: towards black
        shear(1),  # shear_x: column moves with row
        shear(0),
        translate(1),  # translate_x
        translate(0),
    ]
    return jax.lax.switch(op, branches, image)


def rand_augment(
    key: jax.Array,
    images: jax.Array,
    *,
    num_layers: int = 2,
    magnitude: float = 10.0,
    ops: Sequence[str] = OPS,
) -> jax.Array:
    """RandAugment on a batch ``[B, H, W, C]`` of ``[0, 1]`` images, independently per image.

    Args:
      key: PRNG key.
      images: float images in ``[0, 1]``.
      num_layers: operations applied in sequence to each image (``N``).
      magnitude: the level of every operation (``M``, TF scale 0..10, may exceed 10).
      ops: the subset of :data:`OPS` to draw from.

    Returns:
      Augmented images of the same shape and dtype, clipped to ``[0, 1]``.

    Example:
      >>> out = rand_augment(jax.random.key(0), images, num_layers=2, magnitude=10)
    """
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"Unknown RandAugment ops {unknown}. Choices: {', '.join(OPS)}.")
    if num_layers < 0 or magnitude < 0:
        raise ValueError(f"num_layers and magnitude must be >= 0, got {num_layers}, {magnitude}.")
    allowed = jnp.array([OPS.index(op) for op in ops])

    def one(k, image):
        x = image.astype(jnp.float32)
        for layer in range(num_layers):
            k_op, k_arg = jax.random.split(jax.random.fold_in(k, layer))
            op = allowed[jax.random.randint(k_op, (), 0, len(ops))]
            x = jnp.clip(_apply(op, k_arg, x, float(magnitude)), 0.0, 1.0)
        return x.astype(image.dtype)

    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(one)(keys, images)


def rand_augment_normalized(
    *, num_layers: int, magnitude: float, mean: Sequence[float], std: Sequence[float]
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """:func:`rand_augment` for standardized batches: un-normalizes, augments, re-normalizes.

    Args:
      num_layers: ``N``.
      magnitude: ``M``.
      mean: per-channel mean of the ``[0, 1]`` pixels (``Dataset.mean``).
      std: per-channel std (``Dataset.std``).

    Returns:
      ``augment(key, images) -> images`` for :class:`archjax.train.Recipe`.

    Example:
      >>> augment = rand_augment_normalized(num_layers=2, magnitude=10, mean=ds.mean, std=ds.std)
    """
    mean_arr = jnp.asarray(mean, jnp.float32)
    std_arr = jnp.asarray(std, jnp.float32)

    def augment(key, images):
        pixels = jnp.clip(images * std_arr + mean_arr, 0.0, 1.0)
        out = rand_augment(key, pixels, num_layers=num_layers, magnitude=magnitude)
        return ((out - mean_arr) / std_arr).astype(images.dtype)

    return augment
