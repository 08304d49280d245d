"""Datasets and input pipelines: in-memory digits and shapes, TFDS, grain iterators."""

from archjax.data.base import Dataset
from archjax.data.pipeline import eval_batches, train_iterator
from archjax.data.randaugment import rand_augment, rand_augment_normalized
from archjax.data.registry import check_dataset, get_dataset, list_datasets

__all__ = [
    "Dataset",
    "check_dataset",
    "eval_batches",
    "get_dataset",
    "list_datasets",
    "rand_augment",
    "rand_augment_normalized",
    "train_iterator",
]
