"""Normalization layers: each kind's defining invariant, under jit."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from archjax.layers import NORM_KINDS, norm_layer

X = jax.random.normal(jax.random.key(0), (4, 5, 6, 40)) * 3.0 + 1.5


def _init_apply(kind, x, *, train, **kw):
    """Initializes ``kind`` and applies it under jit; returns (y, variables, updates)."""
    module = norm_layer(kind, train=train, **kw)
    variables = module.init(jax.random.key(1), x)

    @jax.jit
    def apply(variables, x):
        return module.apply(variables, x, mutable=["batch_stats"])

    y, updates = apply(variables, x)
    return y, variables, updates


def _np_group_norm(x, groups, eps=1e-5):
    b, c = x.shape[0], x.shape[-1]
    xg = x.reshape(b, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = xg.var(axis=(1, 3), keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)


def test_unknown_kind_lists_kinds():
    with pytest.raises(ValueError, match="Unknown norm kind 'batchnorm'") as e:
        norm_layer("batchnorm", train=True)
    for kind in NORM_KINDS:
        assert kind in str(e.value)


@pytest.mark.parametrize("kind", NORM_KINDS)
def test_shape_dtype_and_fp32_params(kind):
    y, variables, _ = _init_apply(kind, X.astype(jnp.bfloat16), train=True, dtype=jnp.bfloat16)
    chex.assert_shape(y, X.shape)
    assert y.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(y.astype(jnp.float32))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_layer_norm_normalizes_each_position_over_channels():
    y, _, _ = _init_apply("layer", X, train=False)
    chex.assert_trees_all_close(y.mean(-1), jnp.zeros(X.shape[:-1]), atol=1e-5)
    chex.assert_trees_all_close(y.var(-1), jnp.ones(X.shape[:-1]), atol=1e-3)


def test_rms_norm_gives_unit_mean_square():
    y, variables, _ = _init_apply("rms", X, train=False)
    assert set(variables["params"]) == {"scale"}
    chex.assert_trees_all_close(jnp.mean(y**2, -1), jnp.ones(X.shape[:-1]), atol=1e-3)


def test_batch_norm_train_eval_and_running_stats():
    y, variables, updates = _init_apply("batch", X, train=True)
    assert set(variables["params"]) == {"scale", "bias"}
    assert set(variables["batch_stats"]) == {"mean", "var"}
    # Train: batch statistics per channel over (N, H, W).
    chex.assert_trees_all_close(y.mean((0, 1, 2)), jnp.zeros(40), atol=1e-5)
    chex.assert_trees_all_close(y.var((0, 1, 2)), jnp.ones(40), atol=1e-3)
    # Running averages with momentum 0.9 from (0, 1).
    stats = updates["batch_stats"]
    chex.assert_trees_all_close(stats["mean"], 0.1 * X.mean((0, 1, 2)), rtol=1e-5)
    chex.assert_trees_all_close(stats["var"], 0.9 + 0.1 * X.var((0, 1, 2)), rtol=1e-5)
    # Eval: the stored statistics, and no update.
    eval_vars = {"params": variables["params"], "batch_stats": stats}
    y_eval, eval_updates = jax.jit(
        lambda v, x: norm_layer("batch", train=False).apply(v, x, mutable=["batch_stats"])
    )(eval_vars, X)
    want = (X - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5)
    chex.assert_trees_all_close(y_eval, want, atol=1e-5)
    chex.assert_trees_all_equal(eval_updates["batch_stats"], stats)


def test_batch_norm_cross_replica_under_shard_map_equals_global_batch():
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    module = norm_layer("batch", train=True, axis_name="data")
    variables = norm_layer("batch", train=True).init(jax.random.key(0), X)

    @jax.jit
    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec("data")),
        out_specs=(PartitionSpec("data"), PartitionSpec()),
    )
    def sharded(variables, x):
        y, upd = module.apply(variables, x, mutable=["batch_stats"])
        return y, upd["batch_stats"]

    y, stats = sharded(variables, X)
    y_ref, _, upd_ref = _init_apply("batch", X, train=True)
    chex.assert_trees_all_close(y, y_ref, atol=1e-5)
    chex.assert_trees_all_close(stats, upd_ref["batch_stats"], rtol=1e-5)


@pytest.mark.parametrize("channels,groups", [(64, 32), (40, 20), (24, 24), (8, 8)])
def test_group_norm_uses_largest_valid_group_count(channels, groups):
    x = np.asarray(X[..., :1].repeat(channels, -1)) + np.random.default_rng(0).normal(
        size=(*X.shape[:-1], channels)
    )
    y, _, _ = _init_apply("group", x, train=False)
    np.testing.assert_allclose(y, _np_group_norm(x, groups), atol=1e-4)


def test_group_norm_custom_groups():
    y, _, _ = _init_apply("group", X, train=False, num_groups=4)
    np.testing.assert_allclose(y, _np_group_norm(np.asarray(X), 4), atol=1e-4)


def test_evonorm_s0_matches_numpy():
    module = norm_layer("evonorm_s0", train=True)
    variables = module.init(jax.random.key(1), X)
    rng = np.random.default_rng(0)
    params = {k: rng.uniform(0.5, 1.5, 40).astype(np.float32) for k in ("scale", "bias", "v")}
    y = jax.jit(module.apply)({"params": params}, X)
    x = np.asarray(X, np.float64).reshape(4, -1, 20, 2)
    std = np.sqrt(x.var(axis=(1, 3), keepdims=True) + 1e-5)
    x = x.reshape(X.shape)
    std = np.broadcast_to(std, (4, 30, 20, 2)).reshape(X.shape)
    want = x / (1 + np.exp(-params["v"] * x)) / std * params["scale"] + params["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert jax.tree.map(jnp.shape, variables["params"]) == {
        "scale": (40,),
        "bias": (40,),
        "v": (40,),
    }


def test_batch_channel_norm_matches_numpy_and_updates_stats():
    y, variables, updates = _init_apply("batch_channel", X, train=True)
    assert set(variables["params"]) == {"batch", "channel"}
    x = np.asarray(X, np.float64)
    bn = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y, _np_group_norm(bn, 20), atol=1e-4)
    stats = updates["batch_stats"]["batch"]
    chex.assert_trees_all_close(stats["mean"], 0.1 * X.mean((0, 1, 2)), rtol=1e-5)
    # Eval uses the running statistics of the batch step.
    y_eval = jax.jit(norm_layer("batch_channel", train=False).apply)(
        {"params": variables["params"], "batch_stats": updates["batch_stats"]}, X
    )
    bn = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5)
    np.testing.assert_allclose(y_eval, _np_group_norm(bn, 20), atol=1e-4)


def test_none_is_identity_without_variables():
    y, variables, _ = _init_apply("none", X, train=True)
    chex.assert_trees_all_equal(y, X)
    assert not jax.tree.leaves(variables)
