"""Tests for archjax/data/registry.py: names, dispatch and error messages."""

import re

import pytest

import archjax.data
from archjax.data import Dataset, get_dataset, list_datasets


def test_public_names():
    assert set(archjax.data.__all__) == {
        "Dataset",
        "check_dataset",
        "eval_batches",
        "get_dataset",
        "list_datasets",
        "rand_augment",
        "rand_augment_normalized",
        "train_iterator",
    }


def test_list_datasets_shows_tfds_as_a_pattern():
    assert list_datasets() == ["digits", "shapes", "tfds:<name>"]


@pytest.mark.parametrize("name", ["digits", "shapes"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_builtin_datasets_load(name, split):
    kwargs = {"num_examples": 20} if name == "shapes" else {}
    ds = get_dataset(name, split, image_size=8, **kwargs)
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.split, ds.image_shape[:2]) == (name, split, (8, 8))
    example = ds.source[len(ds) - 1]
    assert example["image"].shape == ds.image_shape
    assert 0 <= example["label"] < ds.num_classes


@pytest.mark.parametrize("name", ["mnist", "tfds", "tfds:", "Digits", "digits "])
def test_unknown_name_lists_the_allowed_ones(name):
    with pytest.raises(ValueError) as error:
        get_dataset(name, "train")
    message = str(error.value)
    assert repr(name) in message
    assert all(allowed in message for allowed in list_datasets())


def test_unknown_split_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=re.escape("'validation'") + r".*\['train', 'test'\]"):
        get_dataset("digits", "validation")


@pytest.mark.parametrize(
    ("name", "key"), [("digits", "num_examples"), ("shapes", "colour"), ("tfds:mnist", "seed")]
)
def test_unknown_kwarg_is_named(name, key):
    # Checked before anything is loaded, so no TFDS data is needed.
    with pytest.raises(TypeError, match=rf"{re.escape(repr(name))}.*'{key}'.*allowed"):
        get_dataset(name, "train", **{key: 1})


def test_shapes_error_lists_its_kwargs():
    with pytest.raises(TypeError, match="num_examples.*num_classes.*channels.*seed"):
        get_dataset("shapes", "train", size=3)
