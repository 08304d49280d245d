import jax
import numpy as np
import pytest

from archjax import parallel


def test_mesh_uses_all_devices_on_data_axis():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == jax.device_count() == 8
    assert parallel.make_mesh(2).shape["data"] == 2


def test_make_mesh_rejects_too_many_devices():
    with pytest.raises(ValueError, match="num_devices=9 but 8"):
        parallel.make_mesh(9)


def test_shard_batch_splits_leading_axis():
    mesh = parallel.make_mesh()
    batch = {"x": np.arange(16 * 3).reshape(16, 3), "y": np.arange(16)}
    out = parallel.shard_batch(batch, mesh)
    assert out["x"].shape == (16, 3)
    for shard in out["x"].addressable_shards:
        start = shard.index[0].start
        np.testing.assert_array_equal(shard.data, batch["x"][start : start + 2])
    np.testing.assert_array_equal(np.asarray(out["y"]), batch["y"])


def test_batch_not_divisible_by_devices_names_both_numbers():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match=r"Batch size 12 is not divisible .* \(8\)\. .*8 or 16"):
        parallel.check_batch_size(12, mesh)
    with pytest.raises(ValueError, match="Batch size 12"):
        parallel.shard_batch({"x": np.zeros((12, 2))}, mesh)
    parallel.check_batch_size(12, parallel.make_mesh(4))  # fine on 4 devices
