"""The `Dataset` record: one split of one dataset, ready for the input pipeline."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Dataset:
    """One split of an image-classification dataset.

    Every source yields `{"image": uint8 [H, W, C], "label": int}` with images already at
    `image_shape`; the pipeline scales pixels to [0, 1] and then normalises them with
    `(x - mean) / std`, so `mean` and `std` are in units of [0, 1]-scaled pixels.

    Equality is identity (`eq=False`): two records are only "the same" if they share a source.
    """

    # Registry name, e.g. "digits" or "tfds:mnist".
    name: str
    # Split name as given to `get_dataset` (e.g. "train", or a TFDS slice like "train[:10%]").
    split: str
    # Grain random-access source: `__len__` and `__getitem__(i)` -> {"image", "label"}.
    source: Any
    # Labels are integers in [0, num_classes).
    num_classes: int
    # (H, W, C) of every image, after any resize.
    image_shape: tuple[int, int, int]
    # Per-channel statistics of [0, 1]-scaled pixels, one float per channel.
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        channels = self.image_shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"Dataset {self.name!r}: mean {self.mean} and std {self.std} must have one "
                f"value per channel ({channels})."
            )
        if min(self.std) <= 0:
            raise ValueError(f"Dataset {self.name!r}: std must be positive, got {self.std}.")

    def __len__(self) -> int:
        return len(self.source)
