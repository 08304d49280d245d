"""ZeroQ data distillation: BatchNorm statistics matched layer by layer, determinism, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax.quant import batchnorm_gaps, distill_calibration_data

SHAPE = (16, 6, 6, 2)


class ConvBN(nn.Module):
    """conv -> BN -> relu -> conv -> BN -> pool -> dense: each BatchNorm's input is a conv."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn1")(x))
        x = nn.Conv(3, (3, 3), name="conv2")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn2")(x)
        return nn.Dense(5, name="head")(x.mean(axis=(1, 2)))


class NoBN(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return nn.Dense(5)(nn.relu(nn.Conv(4, (3, 3))(x)).mean(axis=(1, 2)))


def conv_outputs(model, variables, x):
    """The BatchNorm inputs, read independently of the library: the convs' outputs."""
    _, state = model.apply(variables, x, capture_intermediates=lambda m, _: isinstance(m, nn.Conv))
    inter = state["intermediates"]
    return {name: inter[conv]["__call__"][0] for name, conv in (("bn1", "conv1"), ("bn2", "conv2"))}


@pytest.fixture(scope="module")
def trained():
    """Running statistics of a structured source batch (shifted, scaled, not N(0, 1))."""
    model = ConvBN()
    source = jax.random.uniform(jax.random.key(3), SHAPE) * 4.0 + 1.5
    variables = model.init(jax.random.key(0), source)
    for name in ("bn1", "bn2"):  # in order: bn2's input depends on bn1's statistics
        h = conv_outputs(model, variables, source)[name]
        stats = {**variables["batch_stats"]}
        stats[name] = {"mean": h.mean(axis=(0, 1, 2)), "var": h.var(axis=(0, 1, 2))}
        variables = {**variables, "batch_stats": stats}
    return model, variables


def relative_gaps(model, variables, x):
    out = {}
    for name, h in conv_outputs(model, variables, x).items():
        run = variables["batch_stats"][name]
        sigma = jnp.sqrt(run["var"])
        mean_gap = jnp.linalg.norm(h.mean(axis=(0, 1, 2)) - run["mean"]) / jnp.linalg.norm(sigma)
        std_gap = jnp.linalg.norm(h.std(axis=(0, 1, 2)) - sigma) / jnp.linalg.norm(sigma)
        out[name] = (float(mean_gap), float(std_gap))
    return out


def test_distilled_batch_matches_statistics_layer_by_layer(trained):
    model, variables = trained
    noise = jax.random.normal(jax.random.key(9), SHAPE)
    x = distill_calibration_data(model, variables, SHAPE, steps=150, seed=0, learning_rate=0.1)
    assert x.shape == SHAPE and x.dtype == jnp.float32
    tol = 0.05
    before, after = relative_gaps(model, variables, noise), relative_gaps(model, variables, x)
    for name in ("bn1", "bn2"):
        assert max(before[name]) > 4 * tol, (name, before[name])  # noise does not match
        assert max(after[name]) < tol, (name, after[name])  # the distilled batch does
    # The library's own report agrees with the independent reading.
    report = batchnorm_gaps(model, variables, x)
    assert list(report) == ["bn1", "bn2"]
    for name, (m, s) in after.items():
        np.testing.assert_allclose([report[name]["mean"], report[name]["std"]], [m, s], atol=1e-3)
    # Inference mode: the stored statistics are not touched.
    assert variables["batch_stats"]["bn1"]["mean"].shape == (4,)


def test_same_seed_same_batch_bitwise(trained):
    model, variables = trained
    a = distill_calibration_data(model, variables, SHAPE, steps=3, seed=7)
    b = distill_calibration_data(model, variables, SHAPE, steps=3, seed=7)
    c = distill_calibration_data(model, variables, SHAPE, steps=3, seed=8)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_model_without_batchnorm_is_refused():
    model = NoBN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))
    with pytest.raises(ValueError, match="batch_stats"):
        distill_calibration_data(model, variables, SHAPE, steps=1)
    with pytest.raises(ValueError, match="needs a model with BatchNorm"):
        distill_calibration_data(model, {**variables, "batch_stats": {"x": 1}}, SHAPE, steps=1)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((16,), "shape=\\(16,\\) is not allowed"),
        ((16, 0, 6, 2), "tuple of positive ints"),
        ("16x6x6x2", "is not allowed"),
        ((16, 6.0, 6, 2), "is not allowed"),
        ((16, 6, 6, 3), "does not fit the model"),  # conv1 was built for 2 channels
    ],
)
def test_bad_shape_is_refused(trained, shape, match):
    model, variables = trained
    with pytest.raises(ValueError, match=match):
        distill_calibration_data(model, variables, shape, steps=1)


def test_bad_steps_and_learning_rate(trained):
    model, variables = trained
    with pytest.raises(ValueError, match="steps=0"):
        distill_calibration_data(model, variables, SHAPE, steps=0)
    with pytest.raises(ValueError, match="learning_rate=-1"):
        distill_calibration_data(model, variables, SHAPE, learning_rate=-1)
