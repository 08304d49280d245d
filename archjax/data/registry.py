"""Dataset names -> loaders, with argument checking that names what is wrong."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from archjax.data import embedded
from archjax.data import tfds as tfds_lib
from archjax.data.base import Dataset

_TFDS_PREFIX = "tfds:"
_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": embedded.load_digits,
    "shapes": embedded.load_shapes,
}
# Arguments every loader takes explicitly; the rest are dataset-specific kwargs.
_COMMON = ("split", "image_size", "data_dir")


def list_datasets() -> list[str]:
    """Returns the accepted dataset names; "tfds:<name>" stands for any TFDS dataset.

    Returns:
      Sorted names, e.g. `["digits", "shapes", "tfds:<name>"]`.
    """
    return [*sorted(_LOADERS), f"{_TFDS_PREFIX}<name>"]


def _loader(name: str) -> Callable[..., Dataset]:
    """Returns the loader for a dataset name, or raises ValueError listing the names."""
    if not isinstance(name, str):
        raise ValueError(f"Dataset name must be a string, got {name!r}.")
    if name.startswith(_TFDS_PREFIX) and len(name) > len(_TFDS_PREFIX):
        return functools.partial(tfds_lib.load_tfds, name[len(_TFDS_PREFIX) :])
    if name in _LOADERS:
        return _LOADERS[name]
    raise ValueError(f"Unknown dataset {name!r}; allowed: {list_datasets()}.")


def _check_kwargs(name: str, loader: Callable[..., Dataset], kwargs: dict) -> None:
    """Raises TypeError naming keyword arguments that the loader does not take."""
    accepted = [p for p in inspect.signature(loader).parameters if p not in _COMMON]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"Dataset {name!r} got unknown keyword argument(s) {unknown}; "
            f"allowed: {accepted or 'none'}."
        )


def get_dataset(
    name: str,
    split: str,
    *,
    image_size: int | None = None,
    data_dir: str | None = None,
    **kwargs,
) -> Dataset:
    """Returns one split of a named dataset.

    Args:
      name: one of `list_datasets()`: "digits" (sklearn 8x8 digits, splits train/test with
        1438/359 examples), "shapes" (procedural shapes; kwargs `num_examples`, `num_classes`,
        `channels`, `seed`) or "tfds:<name>" (a prepared TFDS dataset; kwargs `image_key`,
        `label_key`, `mean`, `std`, `download`).
      split: split name; "train"/"test" for the in-memory datasets, any TFDS split for TFDS.
      image_size: side of the square output images; each dataset documents its default.
      data_dir: TFDS data directory; ignored by in-memory datasets.
      **kwargs: dataset-specific options, see above.

    Returns:
      The `Dataset`.

    Raises:
      ValueError: unknown name or split, or an invalid option value.
      TypeError: an option that this dataset does not take.

    Example:
      >>> ds = get_dataset("shapes", "train", image_size=16, num_examples=100)
      >>> len(ds), ds.image_shape
      (100, (16, 16, 3))
    """
    loader = _loader(name)
    _check_kwargs(name, loader, kwargs)
    return loader(split, image_size=image_size, data_dir=data_dir, **kwargs)


def check_dataset(
    name: str,
    split: str,
    *,
    image_size: int | None = None,
    data_dir: str | None = None,
    **kwargs,
) -> None:
    """Raises what `get_dataset` would raise about the name, options and missing files.

    Cheap enough to run before anything is written: a TFDS dataset is opened (TFDS reads
    only its metadata until an example is asked for); an in-memory dataset is not built.

    Args:
      name, split, image_size, data_dir, **kwargs: as for `get_dataset`.

    Raises:
      ValueError: unknown name, or a TFDS dataset, split or feature that is not there.
      TypeError: an option that this dataset does not take.

    Example:
      >>> check_dataset("shapes", "train", num_examples=100)
    """
    loader = _loader(name)
    _check_kwargs(name, loader, kwargs)
    if name.startswith(_TFDS_PREFIX):
        loader(split, image_size=image_size, data_dir=data_dir, **kwargs)
