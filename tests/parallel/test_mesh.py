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


def test_mesh_shape_resolves_minus_one_and_orders_axes():
    mesh = parallel.make_mesh(shape={"fsdp": 2, "data": -1})
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
    assert parallel.batch_axes(mesh) == ("data", "fsdp") and parallel.batch_size_divisor(mesh) == 8
    tp = parallel.make_mesh(shape={"data": -1, "model": 2})
    assert parallel.batch_size_divisor(tp) == 4  # the batch is copied along 'model'
    parallel.check_batch_size(12, tp)
    assert parallel.data_sharding(tp).spec == jax.sharding.PartitionSpec(("data", "fsdp"))


@pytest.mark.parametrize(
    "shape,message",
    [
        ({"data": 3}, r"has 3 devices but 8 are used"),
        ({"data": -1, "fsdp": -1}, r"at most one -1"),
        ({"data": -1, "fsdp": 3}, r"does not divide 8 devices"),
        ({"dta": 8}, r"Unknown mesh axis 'dta'; allowed axes: data, fsdp, model"),
    ],
)
def test_bad_mesh_shape_names_the_problem(shape, message):
    with pytest.raises(ValueError, match=message):
        parallel.make_mesh(shape=shape)


def test_initialize_is_a_no_op_without_configuration(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize() is False
    with pytest.raises(ValueError, match=r"missing \['num_processes', 'process_id'\]"):
        parallel.initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id must be in"):
        parallel.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
        parallel.initialize("127.0.0.1:1234", process_id=0)
