"""Numpy image helpers shared by the data sources: resizing and channel statistics.

They run inside grain worker threads and at dataset construction, so they stay in numpy:
no device memory, no compilation, and no TensorFlow.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def _interp_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Returns the [out, in] weights of 1-D linear interpolation with half-pixel centres."""
    scale = in_size / out_size
    # When shrinking, the triangle kernel is widened by the scale factor so that every input
    # pixel contributes (antialiasing); this matches `jax.image.resize(..., "linear")`.
    width = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale - 0.5
    taps = np.arange(in_size)
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / width)
    # Renormalise so that kernels clipped at the border still sum to one.
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes images with (antialiased) bilinear interpolation.

    Args:
      images: array [..., H, W, C] of any real dtype.
      height: output height in pixels.
      width: output width in pixels.

    Returns:
      float32 array [..., height, width, C]. Integer inputs are not rescaled.

    Example:
      >>> resize_bilinear(np.ones((2, 8, 8, 1)), 16, 16).shape
      (2, 16, 16, 1)
    """
    images = np.asarray(images, dtype=np.float32)
    rows = _interp_matrix(images.shape[-3], height)
    cols = _interp_matrix(images.shape[-2], width)
    return np.einsum("oh,...hwc,pw->...opc", rows, images, cols, optimize=True)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes images, keeping uint8 as uint8 (rounded); a no-op when the size already matches.

    Args:
      image: array [..., H, W, C], uint8 or float.
      height: output height in pixels.
      width: output width in pixels.

    Returns:
      array [..., height, width, C]: uint8 for uint8 input, float32 otherwise.
    """
    if image.shape[-3:-1] == (height, width):
        return image
    resized = resize_bilinear(image, height, width)
    if image.dtype == np.uint8:
        return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return resized


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1].

    Args:
      images: uint8 array [N, H, W, C].

    Returns:
      (mean, std), each a tuple of C floats.
    """
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    # A constant channel would make std zero and normalisation divide by zero.
    std = np.maximum(pixels.std(axis=0), 1e-6)
    return tuple(float(m) for m in pixels.mean(axis=0)), tuple(float(s) for s in std)
