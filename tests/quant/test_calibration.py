"""Calibration: absmax/asymmetric scales by hand, percentile and MSE search."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax.quant import (
    FloatFormat,
    IntFormat,
    PerBlock,
    PerChannel,
    PerTensor,
    calibrate_tensor,
    fake_quant,
)

SHAPE = (64, 6)


@pytest.fixture(scope="module")
def x():
    key_a, key_b = jax.random.split(jax.random.key(0))
    base = jax.random.normal(key_a, SHAPE) + 0.7
    return base + 4.0 * jax.random.bernoulli(key_b, 0.02, SHAPE)  # a few outliers


def test_zero_is_exact_and_calibration_by_hand(x):
    w = np.asarray(x)
    qp = calibrate_tensor(x, IntFormat(4), granularity=PerChannel(-1))
    np.testing.assert_allclose(qp.scale.reshape(-1), np.abs(w).max(0) / 7, rtol=1e-6)
    asym = IntFormat(8, signed=False, symmetric=False)
    qp = calibrate_tensor(x, asym)
    lo, hi = min(w.min(), 0.0), max(w.max(), 0.0)
    np.testing.assert_allclose(qp.scale, (hi - lo) / 255, rtol=1e-6)
    np.testing.assert_equal(int(qp.zero_point), round(-lo / float(qp.scale)))
    assert float(fake_quant(jnp.zeros(()), asym, qp)) == 0.0
    zeros = calibrate_tensor(jnp.zeros((3, 4)), IntFormat(8), granularity=PerChannel(0))
    assert (np.asarray(zeros.scale) > 0).all()
    chex.assert_trees_all_equal(
        fake_quant(jnp.zeros((3, 4)), IntFormat(8), zeros, granularity=PerChannel(0)),
        jnp.zeros((3, 4)),
    )


@pytest.mark.parametrize(
    "fmt",
    [
        IntFormat(4),
        IntFormat(3, symmetric=False),
        FloatFormat(2, 1, finite_only=True, has_nan=False),
    ],
    ids=["int4", "int3_asym", "fp4"],
)
def test_percentile_and_mse_calibration(fmt, x):
    @jax.jit
    def scales_and_errors(v):
        out = {}
        for method in ("absmax", "percentile", "mse"):
            qp = calibrate_tensor(
                v, fmt, granularity=PerChannel(-1), method=method, percentile=99.0
            )
            y = fake_quant(v, fmt, qp, granularity=PerChannel(-1))
            out[method] = (qp.scale, jnp.sum(jnp.square(y - v), axis=0))
        return out

    out = scales_and_errors(x)
    errors = {method: np.asarray(err) for method, (_, err) in out.items()}
    assert (out["percentile"][0] <= out["absmax"][0] * (1 + 1e-6)).all()
    # The MSE search includes the absmax range (ratio 1), so it is never worse per channel.
    assert (errors["mse"] <= errors["absmax"] * (1 + 1e-6)).all()
    assert errors["mse"].sum() < errors["absmax"].sum()


def test_qparams_shapes_follow_the_granularity(x):
    fmt = IntFormat(4, symmetric=False)
    shapes = {
        PerTensor(): (),
        PerChannel(-1): (1, 6),
        PerChannel(0): (64, 1),
        PerBlock(16, 0): (4, 6),
        PerBlock(3, 1): (64, 2),
    }
    for granularity, shape in shapes.items():
        qp = jax.jit(lambda v, g=granularity: calibrate_tensor(v, fmt, granularity=g))(x)
        chex.assert_shape([qp.scale, qp.zero_point], shape)
        assert qp.zero_point.dtype == jnp.int32
        # Each block's scale spans exactly that block's range.
        if isinstance(granularity, PerBlock) and granularity.axis == 0:
            block = np.asarray(x)[16:32, 2]
            lo, hi = min(block.min(), 0), max(block.max(), 0)
            np.testing.assert_allclose(qp.scale[1, 2], (hi - lo) / 15, rtol=1e-6)
    with pytest.raises(ValueError, match="method='max' is not allowed"):
        calibrate_tensor(x, fmt, method="max")
    with pytest.raises(ValueError, match="percentile=0"):
        calibrate_tensor(x, fmt, method="percentile", percentile=0)


def test_old_names_are_deprecated_aliases():
    """``calibrate`` / ``quantize`` (renamed ``calibrate_tensor`` / ``quantize_model``)
    still work for one release and say what replaces them."""
    from archjax import models, quant

    w = jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)
    with pytest.warns(DeprecationWarning, match="use archjax.quant.calibrate_tensor"):
        old = quant.calibrate(w, IntFormat(bits=8), granularity=PerChannel(-1))
    new = calibrate_tensor(w, IntFormat(bits=8), granularity=PerChannel(-1))
    assert jnp.array_equal(old.scale, new.scale)
    with pytest.warns(DeprecationWarning, match="use archjax.quant.quantize_model"):
        quant.quantize(models.create("resnet8"), [])
