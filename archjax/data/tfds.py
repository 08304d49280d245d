"""TFDS datasets read through `tfds.data_source` (ArrayRecord random access, no TensorFlow).

The dataset must already be prepared in `data_dir` in the `array_record` file format (for
example `tfds build mnist --file_format=array_record --data_dir=...`); reading needs neither
TensorFlow nor the network. Pass `download=True` to let TFDS download and prepare it.
A dataset that is not there is one `ValueError` line that names the directory looked in and
the command that prepares it (TFDS's own errors for it are long and misleading).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Sequence

import numpy as np

from archjax.data import image as image_lib
from archjax.data.base import Dataset

_DEFAULT_MEAN = 0.5
_DEFAULT_STD = 0.5


class TfdsSource:
    """Grain source over a TFDS data source: renames keys and optionally resizes images."""

    def __init__(self, source, *, image_key: str, label_key: str, size: tuple[int, int] | None):
        self._source = source
        self._image_key = image_key
        self._label_key = label_key
        self._size = size

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        example = self._source[index]
        image = np.asarray(example[self._image_key])
        if image.ndim == 2:  # grey images stored without a channel axis
            image = image[..., None]
        if self._size is not None:
            image = image_lib.resize(image, *self._size)
        return {"image": image, "label": int(example[self._label_key])}

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r}, size={self._size})"


def _per_channel(key: str, value, default: float, channels: int) -> tuple[float, ...]:
    """Broadcasts a float or a per-channel sequence to a tuple of `channels` floats."""
    if value is None:
        value = default
    values = (value,) * channels if np.isscalar(value) else tuple(value)
    if len(values) != channels:
        raise ValueError(f"{key} needs 1 or {channels} values (one per channel), got {value!r}.")
    return tuple(float(v) for v in values)


def _image_shape(name: str, feature, image_size: int | None) -> tuple[int, int, int]:
    """Returns (H, W, C) of the images after the optional resize."""
    shape = tuple(feature.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(f"{name}: expected images [H, W, C] with known C, got shape {shape}.")
    if image_size is not None:
        return (image_size, image_size, shape[-1])
    if None in shape:
        raise ValueError(f"{name}: images have variable size {shape}; pass image_size.")
    return shape


def _feature(name: str, features, key: str, role: str):
    """Returns `features[key]`, or raises ValueError listing the available keys."""
    if key not in features:
        raise ValueError(
            f"{name}: no {role} feature {key!r}; available: {sorted(features.keys())}. "
            f"Pass {role}_key=... to choose another."
        )
    return features[key]


class _MissingMetadataFilter(logging.Filter):
    """Drops TFDS's warning about a missing dataset_info.json: _not_prepared says it better."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _quiet_missing_metadata():
    """Filters that one warning from the ``absl`` logger (TFDS logs through it) while open."""
    logger, quiet = logging.getLogger("absl"), _MissingMetadataFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _not_prepared(tfds, tfds_name: str, data_dir: str | None) -> str:
    """One line saying why `tfds_name` cannot be read from `data_dir` and how to prepare it."""
    with _quiet_missing_metadata():
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        prepared = builder.is_prepared()
    root = builder.data_dir_root
    if prepared:
        problem = (
            f"is prepared in {root} as {builder.info.file_format.value}, which has no random access"
        )
    elif data_dir is None:
        problem = f"is not prepared in TFDS's default data_dir {root} (no data_dir given)"
    elif not os.path.isdir(data_dir):
        problem = f"is not prepared: data_dir {data_dir} does not exist"
    else:
        problem = (
            f"is not prepared in data_dir {data_dir} (no {builder.data_dir}/dataset_info.json)"
        )
    return (
        f"tfds:{tfds_name} {problem}. Prepare it on a machine with network access with "
        f"`tfds build {tfds_name} --file_format=array_record --data_dir={root}` and copy that "
        "directory here (point data_dir at it), or pass download=True to let TFDS do it."
    )


def load_tfds(
    tfds_name: str,
    split: str,
    *,
    image_size: int | None = None,
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    download: bool = False,
) -> Dataset:
    """Loads a split of a TFDS image-classification dataset as a random-access source.

    Args:
      tfds_name: TFDS name, optionally with config and version ("mnist", "cifar10:3.0.2").
      split: any TFDS split expression ("train", "test[:10%]"...).
      image_size: if given, images are resized (bilinear) to image_size x image_size as they
        are read; required when the dataset's images vary in size.
      data_dir: TFDS data directory (default: TFDS's own, `~/tensorflow_datasets`).
      image_key: feature holding the uint8 image.
      label_key: feature holding the label; must be a `ClassLabel`.
      mean: normalisation mean(s) of [0, 1]-scaled pixels; default 0.5.
      std: normalisation std(s) of [0, 1]-scaled pixels; default 0.5.
      download: let TFDS download and prepare the data if missing (needs the network).

    Returns:
      The split as a `Dataset` named "tfds:<tfds_name>".

    Raises:
      ValueError: an unknown TFDS name, a dataset not prepared (for random access) in
        `data_dir`, an unknown split or feature key, or a bad option value.
    """
    import tensorflow_datasets as tfds  # Imported lazily: only this path needs TFDS.

    name = f"tfds:{tfds_name}"
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"{name}: image_size must be a positive integer, got {image_size!r}.")
    try:
        with _quiet_missing_metadata():
            source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=download)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(
            tfds_name, tfds.list_builders(with_community_datasets=False), n=3
        )
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{name}: TFDS has no dataset {tfds_name!r}.{hint}") from None
    except (KeyError, NotImplementedError):
        # TFDS says "splits is empty" (KeyError) for a dataset missing from its default
        # data_dir, and "already prepared ... in TFRECORD format" for one missing elsewhere.
        raise ValueError(_not_prepared(tfds, tfds_name, data_dir)) from None
    features = source.dataset_info.features
    label = _feature(name, features, label_key, "label")
    if getattr(label, "num_classes", None) is None:
        raise ValueError(f"{name}: label feature {label_key!r} is not a ClassLabel: {label}.")
    shape = _image_shape(name, _feature(name, features, image_key, "image"), image_size)
    return Dataset(
        name=name,
        split=split,
        source=TfdsSource(
            source,
            image_key=image_key,
            label_key=label_key,
            size=None if image_size is None else shape[:2],
        ),
        num_classes=int(label.num_classes),
        image_shape=shape,
        mean=_per_channel("mean", mean, _DEFAULT_MEAN, shape[-1]),
        std=_per_channel("std", std, _DEFAULT_STD, shape[-1]),
    )
