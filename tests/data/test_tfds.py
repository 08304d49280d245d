"""Tests for archjax/data/tfds.py, without TensorFlow and without the network.

Two ways in:
1. `tfds.testing.mock_data`: it patches `DatasetBuilder.as_data_source` (and makes
   `download_and_prepare` a no-op), so `tfds.data_source("mnist")` returns an
   `ArrayRecordDataSource` whose reads come from a random generator built from the real
   builder's features. This works for registered image datasets (mnist, cifar10, cifar100,
   imagenet2012...), but the mock ignores `data_dir`, accepts any split name (splits are a
   MagicMock), and gives train and test the same examples; so splits, data_dir and exact
   values are tested on a real dataset instead:
2. A tiny `GeneratorBasedBuilder` prepared into `tmp_path` as ArrayRecord. Without
   TensorFlow, its image is a `tfds.features.Tensor` (uint8 HWC): `tfds.features.Image`
   encodes PNGs with TensorFlow. Its `_info` builds `tfds.core.DatasetInfo` directly, since
   `dataset_info_from_configs` looks for metadata files next to the module defining the builder.
   It also sets `code_path = None`: for a builder defined in a package module, TFDS 4.9.10
   looks up checksum files through the `importlib_resources` backport, which is not installed
   (TFDS only requires it on Python < 3.9).
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from archjax.data import check_dataset, eval_batches, get_dataset, train_iterator

_SHAPE = (6, 5, 3)
_SPLIT_SIZES = {"train": 24, "test": 10}


def _tiny_examples(split):
    rng = np.random.default_rng(list(_SPLIT_SIZES).index(split))
    images = rng.integers(0, 256, (_SPLIT_SIZES[split], *_SHAPE), dtype=np.uint8)
    return images, np.arange(len(images)) % 4


class ArchjaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """4-class random images; registered with TFDS as "archjax_tiny_images"."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums or metadata files on disk; see the module docstring

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "pixels": tfds.features.Tensor(shape=_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=4),
                "index": tfds.features.Scalar(dtype=np.int32),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in _SPLIT_SIZES}

    def _generate_examples(self, split):
        images, labels = _tiny_examples(split)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"pixels": image, "label": int(label), "index": index}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    ArchjaxTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return str(data_dir)


def _tiny(split, data_dir, **kwargs):
    return get_dataset(
        "tfds:archjax_tiny_images", split, data_dir=data_dir, image_key="pixels", **kwargs
    )


def _to_uint8(images, ds):
    """Undoes the pipeline's normalisation."""
    pixels = images * np.asarray(ds.std, np.float32) + np.asarray(ds.mean, np.float32)
    return np.rint(pixels * 255).astype(np.uint8)


# --- mock_data ------------------------------------------------------------------------------


def test_mock_mnist_metadata_and_batches():
    with tfds.testing.mock_data(num_examples=12):
        ds = get_dataset("tfds:mnist", "train")
        assert (ds.num_classes, ds.image_shape, len(ds)) == (10, (28, 28, 1), 12)
        assert ds.mean == (0.5,) and ds.std == (0.5,)
        batch = next(train_iterator(ds, batch_size=4, seed=0, shard_index=0, shard_count=1))
        assert batch["image"].shape == (4, 28, 28, 1) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and np.all(batch["label"] < 10)
        # [0, 1]-scaled pixels normalised with 0.5/0.5 lie in [-1, 1].
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        batches = list(eval_batches(ds, batch_size=5, shard_index=0, shard_count=1))
        assert [b["mask"].sum() for b in batches] == [5, 5, 2]


def test_mock_resize_and_keys():
    with tfds.testing.mock_data(num_examples=3):
        ds = get_dataset("tfds:cifar100", "test", image_size=12, label_key="coarse_label")
        assert (ds.num_classes, ds.image_shape) == (20, (12, 12, 3))
        assert ds.source[0]["image"].shape == (12, 12, 3)
        assert ds.source[0]["image"].dtype == np.uint8


def test_mock_variable_size_images_need_image_size():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match="image_size"):
            get_dataset("tfds:imagenet2012", "validation")
        ds = get_dataset("tfds:imagenet2012", "validation", image_size=16)
        assert ds.num_classes == 1000 and ds.source[1]["image"].shape == (16, 16, 3)


# --- a dataset prepared locally -------------------------------------------------------------


def test_local_metadata(tiny_dir):
    ds = _tiny("train", tiny_dir)
    assert ds.name == "tfds:archjax_tiny_images"
    assert (len(ds), ds.num_classes, ds.image_shape) == (24, 4, _SHAPE)


def _by_bytes(images, labels):
    return {image.tobytes(): int(label) for image, label in zip(images, labels, strict=True)}


def test_local_values_round_trip_through_eval(tiny_dir):
    ds = _tiny("test", tiny_dir, mean=(0.1, 0.2, 0.3), std=0.25)
    batches = list(eval_batches(ds, batch_size=4, shard_index=0, shard_count=1))
    assert len(batches) == 3
    real = np.concatenate([b["mask"] for b in batches]) == 1
    got_images = _to_uint8(np.concatenate([b["image"] for b in batches])[real], ds)
    got_labels = np.concatenate([b["label"] for b in batches])[real]
    # In storage order (TFDS shuffles examples when it prepares them)...
    stored = tfds.data_source("archjax_tiny_images", split="test", data_dir=tiny_dir)
    np.testing.assert_array_equal(got_images, np.stack([ex["pixels"] for ex in stored]))
    np.testing.assert_array_equal(got_labels, [ex["label"] for ex in stored])
    # ...and exactly the generated examples.
    assert _by_bytes(got_images, got_labels) == _by_bytes(*_tiny_examples("test"))


def test_local_values_round_trip_through_training(tiny_dir):
    ds = _tiny("train", tiny_dir)
    images, labels = _tiny_examples("train")
    it = train_iterator(ds, batch_size=8, seed=1, shard_index=0, shard_count=1)
    batches = [next(it) for _ in range(3)]  # one epoch
    got = np.concatenate([_to_uint8(b["image"], ds) for b in batches])
    got_labels = np.concatenate([b["label"] for b in batches])
    # Each example once per epoch, with its own label; match them up by their bytes.
    assert len(got) == len(images)
    assert _by_bytes(got, got_labels) == _by_bytes(images, labels)


def test_local_resize(tiny_dir):
    ds = _tiny("train", tiny_dir, image_size=10)
    assert ds.image_shape == (10, 10, 3)
    batch = next(train_iterator(ds, batch_size=8, seed=0, shard_index=0, shard_count=1))
    assert batch["image"].shape == (8, 10, 10, 3)


def test_local_unknown_split_lists_splits(tiny_dir):
    with pytest.raises(ValueError, match=r"'valid'.*'train', 'test'"):
        _tiny("valid", tiny_dir)


def test_local_missing_key_lists_features(tiny_dir):
    with pytest.raises(ValueError, match=r"'image'.*\['index', 'label', 'pixels'\]"):
        get_dataset("tfds:archjax_tiny_images", "train", data_dir=tiny_dir)
    with pytest.raises(ValueError, match="not a ClassLabel"):
        _tiny("train", tiny_dir, label_key="index")


@pytest.mark.parametrize("where", ["default", "missing", "empty"])
def test_unprepared_dataset_says_what_is_missing_and_how_to_prepare(tmp_path, where):
    data_dir = {"default": None, "missing": str(tmp_path / "nowhere"), "empty": str(tmp_path)}
    problem = {
        "default": "is not prepared in TFDS's default data_dir",
        "missing": f"data_dir {tmp_path / 'nowhere'} does not exist",
        "empty": f"no {tmp_path}/archjax_tiny_images/1.0.0/dataset_info.json",
    }
    with pytest.raises(ValueError) as error:
        get_dataset("tfds:archjax_tiny_images", "train", data_dir=data_dir[where])
    message = str(error.value)
    assert "\n" not in message and problem[where] in message, message
    assert "tfds build archjax_tiny_images --file_format=array_record --data_dir=" in message
    assert not (tmp_path / "nowhere").exists()


def test_unknown_tfds_name_is_one_line_with_suggestion():
    with pytest.raises(
        ValueError, match=r"^tfds:mnistt: TFDS has no dataset 'mnistt'\. Did you mean 'mnist'"
    ):
        get_dataset("tfds:mnistt", "train")


def test_check_dataset_finds_what_get_dataset_would_refuse(tiny_dir, tmp_path):
    check_dataset("tfds:archjax_tiny_images", "test", data_dir=tiny_dir, image_key="pixels")
    with pytest.raises(ValueError, match="does not exist"):
        check_dataset("tfds:archjax_tiny_images", "test", data_dir=str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"no image feature 'image'"):
        check_dataset("tfds:archjax_tiny_images", "test", data_dir=tiny_dir)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['num_examples'\]"):
        check_dataset("tfds:archjax_tiny_images", "test", data_dir=tiny_dir, num_examples=3)
    check_dataset("shapes", "train", num_examples=10)  # in memory: nothing is built
