"""Grain input pipelines: an endless, shuffled, augmented, checkpointable train iterator and
a padded, masked single pass for evaluation.

Both shard first: process `i` of `n` reads the strided slice `source[i::n]`, so processes see
disjoint examples that together cover the split, and `batch_size` is the global batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

from archjax.data.base import Dataset

# Every element of the grain pipeline is a whole per-process batch, so the buffer counts
# batches; a few are enough to hide the per-batch work of the reading threads.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)


def _shards(batch_size: int, shard_index: int | None, shard_count: int | None):
    """Returns (shard_index, shard_count, per-process batch size), checking them."""
    index = jax.process_index() if shard_index is None else shard_index
    count = jax.process_count() if shard_count is None else shard_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"Need 0 <= shard_index < shard_count, got {index} and {count}.")
    if batch_size < 1 or batch_size % count:
        raise ValueError(
            f"Global batch_size {batch_size} must be a positive multiple of "
            f"shard_count {count} (each process takes batch_size // shard_count examples)."
        )
    return index, count, batch_size // count


def _sharded_source(ds: Dataset, index: int, count: int) -> grain.MapDataset:
    return grain.MapDataset.source(ds.source)[index::count]


class _Normalize:
    """Scales uint8 pixels to [0, 1] (floats are taken as already there), then standardises.

    Works on one example or a batch alike: the statistics broadcast over the channel axis.
    """

    def __init__(self, ds: Dataset):
        self._mean = np.asarray(ds.mean, np.float32)
        self._std = np.asarray(ds.std, np.float32)

    def __call__(self, example: dict) -> dict:
        image = np.asarray(example["image"])
        scale = np.float32(1.0 / 255.0 if image.dtype == np.uint8 else 1.0)
        return {
            "image": (image.astype(np.float32) * scale - self._mean) / self._std,
            "label": np.asarray(example["label"], np.int32),
        }


class _AugmentBatch:
    """Normalises a batch, then takes a random crop of each zero-padded image and flips it.

    Works on whole batches because per-example numpy calls would cost more than the reading.
    Padding comes after normalisation, so the pad value 0 is the dataset's mean colour and the
    border adds no artificial edge.
    """

    def __init__(self, ds: Dataset, crop_pad: int, flip: bool):
        self._normalize = _Normalize(ds)
        self._pad = crop_pad
        self._flip = flip

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        batch = self._normalize(batch)
        if not (self._pad or self._flip):
            return batch
        images, pad = batch["image"], self._pad
        size, height, width, _ = images.shape
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        top, left = rng.integers(0, 2 * pad + 1, size=(2, size))
        rows = top[:, None] + np.arange(height)
        cols = left[:, None] + np.arange(width)
        if self._flip:
            # A flip of the crop is the crop read with its columns in reverse order.
            cols = np.where(rng.random(size)[:, None] < 0.5, cols[:, ::-1], cols)
        batch["image"] = padded[np.arange(size)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return batch


def _seeds(seed: int, shard_index: int) -> tuple[int, int]:
    """Derives independent (shuffle, augmentation) seeds in [0, 2**32) for one process.

    Hashing matters: grain shuffles epoch `e` with `seed + e`, so raw seeds s and s+1 would
    give the same permutations one epoch apart. The process index keeps processes' random
    crops uncorrelated.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    shuffle, augment = np.random.SeedSequence([int(seed), shard_index]).generate_state(2)
    return int(shuffle), int(augment)


def train_iterator(
    ds: Dataset,
    *,
    batch_size: int,
    seed: int,
    random_crop_pad: int = 0,
    random_flip: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
    device_put: Callable[[dict], Any] | None = None,
    device_prefetch: int = 2,
) -> grain.DatasetIterator:
    """Returns an endless iterator of shuffled, normalised, augmented training batches.

    Order guarantee: the batches are a pure function of (ds, batch_size, seed, random_crop_pad,
    random_flip, shard_index, shard_count), independent of threading, timing and of where the
    iterator was restored. Epoch `e` of process `i` is a fresh permutation of `source[i::n]`,
    cut into `len(source[i::n]) // (batch_size // n)` batches; the leftover examples of each
    epoch's permutation are dropped, so batches never straddle epochs. The random crop and flip
    of an example depend on the seed, the process and its position in the stream (batch number
    and slot), so every epoch sees new augmentations.

    Args:
      ds: the dataset split.
      batch_size: GLOBAL batch size; must be divisible by `shard_count`.
      seed: non-negative seed for the shuffle and the augmentations.
      random_crop_pad: if > 0, zero-pad (after normalisation) by this many pixels on every
        side and take a random crop of the original size.
      random_flip: flip images horizontally with probability 1/2.
      shard_index: this process's shard; default `jax.process_index()`.
      shard_count: number of shards; default `jax.process_count()`.
      device_put: if given, maps each host batch to device arrays (e.g.
        `functools.partial(archjax.parallel.shard_batch, mesh=mesh)`) in a background
        thread that runs `device_prefetch` batches ahead of the consumer, so the transfer
        and the host work overlap the train step (double buffering).
      device_prefetch: batches transferred ahead when `device_put` is given (>= 1).

    Returns:
      A grain `DatasetIterator` yielding {"image": float32 [B, H, W, C], "label": int32 [B]}
      with B = batch_size // shard_count (as `device_put` returns them, if given).
      `get_state()` is a JSON-serialisable dict that describes the batches returned so far,
      never those prefetched, and `set_state(state)` on a fresh iterator built with the same
      arguments resumes exactly.

    Example:
      >>> it = train_iterator(ds, batch_size=128, seed=0, random_crop_pad=2)
      >>> batch = next(it)
      >>> state = json.dumps(it.get_state())  # store with the model checkpoint
    """
    index, count, per_process = _shards(batch_size, shard_index, shard_count)
    if random_crop_pad < 0:
        raise ValueError(f"random_crop_pad must be >= 0, got {random_crop_pad}.")
    if device_put is not None and device_prefetch < 1:
        raise ValueError(f"device_prefetch must be >= 1, got {device_prefetch}.")
    shuffle_seed, augment_seed = _seeds(seed, index)
    data = _sharded_source(ds, index, count)
    if len(data) < per_process:
        raise ValueError(
            f"Shard {index} of {count} of {ds.name!r}/{ds.split} has {len(data)} examples, "
            f"fewer than one per-process batch ({per_process})."
        )
    # Batching before `repeat` keeps batches inside an epoch, and `repeat` reseeds the shuffle
    # for every epoch. The augmentation sees the position of the batch in the endless stream,
    # so it differs between epochs too.
    data = data.shuffle(seed=shuffle_seed).batch(per_process, drop_remainder=True).repeat()
    data = data.random_map(_AugmentBatch(ds, random_crop_pad, random_flip), seed=augment_seed)
    batches = data.to_iter_dataset(_READ_OPTIONS)
    if device_put is not None:
        # grain.experimental.device_put's device stage (the reading threads above are its
        # host stage) with the caller's transfer: a global array on a mesh rather than a
        # device_put to one device. grain's prefetch iterator records the state after each
        # element and reports that of the last one returned, so a checkpoint never skips
        # the batches still waiting in the buffer.
        batches = grain.experimental.ThreadPrefetchIterDataset(
            batches.map(device_put), prefetch_buffer_size=device_prefetch
        )
    return iter(batches)


def _padding_batch(ds: Dataset, size: int) -> dict:
    return {
        "image": np.zeros((size, *ds.image_shape), np.float32),
        "label": np.zeros((size,), np.int32),
        "mask": np.zeros((size,), np.float32),
    }


def eval_batches(
    ds: Dataset,
    *,
    batch_size: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> Iterator[dict]:
    """Yields one deterministic pass over this process's slice, in order, padded and masked.

    Every batch has the same shape, so a jitted eval step compiles once, and every process
    yields the same number of batches, `ceil(ceil(len(ds) / n) / (batch_size // n))`, so
    processes step together. Padding examples are zeros with `mask == 0`; weight per-example
    metrics by the mask and each real example counts exactly once.

    Args:
      ds: the dataset split.
      batch_size: GLOBAL batch size; must be divisible by `shard_count`.
      shard_index: this process's shard; default `jax.process_index()`.
      shard_count: number of shards; default `jax.process_count()`.

    Returns:
      An iterator of {"image": float32 [B, H, W, C], "label": int32 [B], "mask": float32 [B]}
      with B = batch_size // shard_count, over the examples `source[i::n]` in order.

    Example:
      >>> correct = total = 0
      >>> for batch in eval_batches(ds, batch_size=256):
      ...     hits = predict(batch["image"]) == batch["label"]
      ...     correct += (hits * batch["mask"]).sum(); total += batch["mask"].sum()
    """
    index, count, per_process = _shards(batch_size, shard_index, shard_count)
    data = _sharded_source(ds, index, count).batch(per_process).map(_Normalize(ds))
    # The largest shard has ceil(len / count) examples; every process matches its batch count.
    num_batches = _ceil_div(_ceil_div(len(ds), count), per_process)
    return _padded(ds, data.to_iter_dataset(_READ_OPTIONS), per_process, num_batches)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _padded(ds: Dataset, batches, size: int, num_batches: int) -> Iterator[dict]:
    """Pads batches to `size` examples with a mask, then appends empty batches up to a count."""
    produced = 0
    for batch in batches:
        real = len(batch["label"])
        batch["mask"] = np.ones(real, np.float32)
        if real < size:
            padding = _padding_batch(ds, size - real)
            batch = {key: np.concatenate([batch[key], padding[key]]) for key in padding}
        yield batch
        produced += 1
    for _ in range(num_batches - produced):
        yield _padding_batch(ds, size)
