"""Input checks of patch-based models (ViT, MLP-Mixer)."""

from __future__ import annotations

import jax


def check_patch_input(model: str, x: jax.Array, image_size: int, patch_size: int) -> None:
    """Raises ``ValueError`` unless ``x`` is NHWC at ``image_size`` and patches tile it.

    Patch models learn one weight per token (position embeddings, Mixer's token
    MLP), so the resolution is part of the parameter shapes and is checked up front.
    """
    if x.ndim != 4 or x.shape[1:3] != (image_size, image_size):
        raise ValueError(
            f"{model} expects NHWC images of {image_size}x{image_size} "
            f"(the image_size knob), got shape {x.shape}."
        )
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of {patch_size}.")
