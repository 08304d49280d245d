"""PTQ: BatchNorm folding keeps outputs, calibration fills quant_stats, BN re-estimation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax.quant import (
    IntFormat,
    QuantRule,
    calibrate_model,
    fold_batchnorm,
    quantize_model,
    reestimate_batch_stats,
)

W8A8 = [QuantRule(pattern=".*", weight=IntFormat(bits=8), activation=IntFormat(bits=8))]


@pytest.fixture(scope="module")
def trained_like():
    """A ResNet-8 with random (not identity) BatchNorm parameters and statistics."""
    model = models.create("resnet8", num_classes=4, width_multiplier=0.25)
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))

    @jax.jit
    def init(key):
        variables = model.init(key, x, train=False)
        leaves, tree = jax.tree.flatten(variables["batch_stats"])
        keys = jax.random.split(jax.random.key(2), len(leaves))
        stats = [
            jax.random.uniform(k, v.shape, minval=0.5, maxval=2.0)
            for k, v in zip(keys, leaves, strict=True)
        ]
        params = jax.tree.map(
            lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape), variables["params"]
        )
        return {"params": params, "batch_stats": jax.tree.unflatten(tree, stats)}

    return model, init(jax.random.key(1)), x


def test_fold_batchnorm_keeps_outputs(trained_like):
    model, variables, x = trained_like
    folded = fold_batchnorm(model, variables, x)
    # Every conv kernel changed (each conv of ResNet-8 feeds a BatchNorm) ...
    changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), folded["params"], variables["params"]
    )
    assert changed["stem_conv"]["kernel"] and changed["stage1_block1"]["conv1"]["kernel"]
    # ... and every BatchNorm is now a bias add.
    for bn in (folded["batch_stats"]["stem_bn"], folded["batch_stats"]["stage1_block1"]["bn2"]):
        np.testing.assert_array_equal(bn["mean"], 0.0)
    apply = jax.jit(lambda v: model.apply(v, x, train=False))
    want, got = apply(variables), apply(folded)
    assert float(jnp.max(jnp.abs(got - want))) < 1e-5 * max(1.0, float(jnp.max(jnp.abs(want))))


def test_calibrate_model_gives_static_scales(trained_like):
    model, variables, x = trained_like
    qmodel = quantize_model(model, W8A8)
    batches = [x[:4], x[4:]]
    qvars = calibrate_model(qmodel, variables, batches)
    stats = jax.tree_util.tree_leaves_with_path(qvars["quant_stats"])
    counts = [int(v) for p, v in stats if "count" in str(p)]
    assert counts and set(counts) == {2}
    # The stored scale is the mean of the two batches' scales.
    one = calibrate_model(qmodel, variables, batches[:1])["quant_stats"]["stem_conv"]
    two = calibrate_model(qmodel, variables, batches[1:])["quant_stats"]["stem_conv"]
    both = qvars["quant_stats"]["stem_conv"]
    chex.assert_trees_all_close(
        both["conv0_lhs"]["scale"], (one["conv0_lhs"]["scale"] + two["conv0_lhs"]["scale"]) / 2
    )
    with pytest.raises(ValueError, match="no batches"):
        calibrate_model(qmodel, variables, [])
    with pytest.raises(ValueError, match="quantize"):
        calibrate_model(model, variables, batches)


def test_reestimate_batch_stats_moves_running_stats_toward_data(trained_like):
    model, variables, x = trained_like
    qmodel = quantize_model(model, W8A8)
    new = reestimate_batch_stats(qmodel, variables, [x] * 40)
    old_mean = variables["batch_stats"]["stem_bn"]["mean"]
    new_mean = new["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(old_mean, new_mean)
    # Converged: one more batch of the same data barely moves the statistics.
    again = reestimate_batch_stats(qmodel, new, [x])["batch_stats"]["stem_bn"]["mean"]
    moved = np.abs(np.asarray(new_mean - old_mean))
    assert np.all(np.abs(np.asarray(again - new_mean)) <= 0.01 * moved)
    chex.assert_trees_all_equal_shapes(new["batch_stats"], variables["batch_stats"])
    chex.assert_tree_all_finite(new["batch_stats"])


def test_fold_batchnorm_finds_the_same_pairs_through_a_quantized_model(trained_like):
    """Pairs are found by tracing, also through the quantized model's interception."""
    model, variables, x = trained_like
    chex.assert_trees_all_close(
        fold_batchnorm(quantize_model(model, W8A8), variables, x),
        fold_batchnorm(model, variables, x),
    )
