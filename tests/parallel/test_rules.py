"""Logical-axis rules: which dimension of which leaf goes on which mesh axis."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from archjax import models, parallel
from archjax.train import abstract_train_state

FSDP = parallel.make_mesh(shape={"fsdp": 8})
TP = parallel.make_mesh(shape={"data": 4, "model": 2})
ALL = parallel.make_mesh(shape={"data": 2, "fsdp": 2, "model": 2})


def spec(path, shape, mesh, **kw):
    return parallel.partition_spec(path, shape, mesh, parallel.ShardingRules(**kw))


def test_megatron_pairs_on_the_model_axis():
    assert spec("params/block0/attn/qkv/kernel", (32, 96), TP) == P(None, "model")
    assert spec("params/block0/attn/qkv/bias", (96,), TP) == P("model")
    assert spec("params/block0/attn/proj/kernel", (32, 32), TP) == P("model", None)
    assert spec("params/block1/mlp/fc1/kernel", (32, 128), TP) == P(None, "model")
    assert spec("params/block1/mlp_tokens/fc2/kernel", (16, 4), TP) == P("model", None)
    assert spec("params/stem_conv/kernel", (7, 7, 3, 64), TP) == P(None, None, None, "model")
    assert spec("params/head/kernel", (32, 10), TP) == P(None, None)  # no rule: copied


def test_optimizer_state_follows_the_parameter_rule():
    assert spec("opt_state/0/mu/block0/mlp/fc1/kernel", (32, 128), TP) == P(None, "model")


def test_fsdp_splits_the_largest_divisible_dimension_of_big_leaves():
    assert spec("params/head/kernel", (64, 1001), FSDP, fsdp_min_size=0) == P("fsdp", None)
    assert spec("params/head/kernel", (64, 1024), FSDP, fsdp_min_size=0) == P(None, "fsdp")
    assert spec("params/head/bias", (10,), FSDP, fsdp_min_size=0) == P(None)  # 8 does not divide
    assert spec("params/head/kernel", (64, 1024), FSDP) == P(None, "fsdp")
    assert spec("params/norm/scale", (64,), FSDP) == P(None)  # below fsdp_min_size
    # With both: model takes its dimension, fsdp another one.
    assert spec("params/block0/mlp/fc1/kernel", (32, 128), ALL, fsdp_min_size=0) == P(
        "fsdp", "model"
    )


def test_dimension_not_divisible_by_the_axis_stays_whole():
    assert spec("params/block0/attn/qkv/bias", (9,), TP) == P(None)


def test_logical_sharding_of_activations():
    assert parallel.logical_sharding(("batch", None), ALL).spec == P(("data", "fsdp"), None)
    assert parallel.logical_sharding(("batch", "mlp"), TP).spec == P("data", "model")


def test_bad_regex_is_named():
    with pytest.raises(ValueError, match=r"bad regex '\('"):
        parallel.ShardingRules(param_rules=(("(", ("embed",)),))


def test_every_vit_and_mixer_block_weight_is_tensor_parallel():
    for name in ("vit_tiny_patch16_224", "mixer_s16_224"):
        model = models.create(name, num_classes=10, **models.tiny_kwargs(name))
        abstract = abstract_train_state(model, optax.sgd(0.1), input_shape=(1, 32, 32, 1))
        specs = parallel.tree_partition_specs(abstract.params, TP)
        for path, s in jax.tree_util.tree_leaves_with_path(specs):
            key = parallel.path_name(path)
            if key.startswith("block") and key.endswith("kernel"):
                assert "model" in s, (name, key, s)
        # A 1-D data mesh replicates everything (the foundation's data parallelism).
        flat = jax.tree.leaves(parallel.tree_partition_specs(abstract, parallel.make_mesh()))
        assert all(all(e is None for e in s) for s in flat)
        assert np.all([isinstance(s, P) for s in flat])
