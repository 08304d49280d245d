"""LSQ and PACT gradients against the papers' formulas, computed by hand in numpy."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax.quant import (
    FloatFormat,
    IntFormat,
    PerChannel,
    PerTensor,
    QParams,
    fake_quant,
    lsq_fake_quant,
    pact,
)

SHAPE = (32, 8)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def variant(request):
    return jax.jit if request.param else (lambda f: f)


@pytest.fixture(scope="module")
def data():
    kx, kw = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, SHAPE) * 1.5, jax.random.normal(kw, SHAPE)


def _lsq_hand(x, upstream, scale, qmin, qmax, n):
    """Esser et al. (2020), eq. 3 times g = 1 / sqrt(N * Qp), and the STE for x."""
    x, up, s = (np.asarray(a, np.float64) for a in (x, upstream, scale))
    v = x / s
    ds = np.where(v <= qmin, qmin, np.where(v >= qmax, qmax, np.round(v) - v))
    g = 1.0 / math.sqrt(n * qmax)
    inside = (v > qmin) & (v < qmax)
    return up * inside, up * ds * g


@pytest.mark.parametrize("fmt", [IntFormat(4), IntFormat(3, signed=False)], ids=["int4", "uint3"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_lsq_gradients_match_the_paper(fmt, per_channel, data, variant):
    x, upstream = data
    scale = jnp.linspace(0.2, 0.5, 8).reshape(1, 8) if per_channel else jnp.float32(0.3)

    def loss(x, s):
        return jnp.sum(upstream * lsq_fake_quant(x, s, fmt))

    gx, gs = variant(jax.grad(loss, argnums=(0, 1)))(x, scale)
    n = SHAPE[0] if per_channel else x.size  # elements sharing one scale
    hand_gx, hand_gs = _lsq_hand(x, upstream, scale, fmt.qmin, fmt.qmax, n)
    hand_gs = hand_gs.sum(0, keepdims=True) if per_channel else hand_gs.sum()
    chex.assert_trees_all_close(gx, jnp.asarray(hand_gx, jnp.float32), atol=1e-6)
    chex.assert_trees_all_close(gs, jnp.asarray(hand_gs, jnp.float32), rtol=1e-5, atol=1e-6)
    # The forward is the plain symmetric integer fake-quant with that scale.
    qp = QParams(scale=scale)
    gran = PerChannel(-1) if per_channel else PerTensor()
    chex.assert_trees_all_equal(
        lsq_fake_quant(x, scale, fmt), fake_quant(x, fmt, qp, granularity=gran)
    )


def test_lsq_grad_scale_override(data):
    x, upstream = data
    gs = jax.grad(lambda s: jnp.sum(upstream * lsq_fake_quant(x, s, IntFormat(4), grad_scale=1.0)))
    _, hand = _lsq_hand(x, upstream, 0.3, -8, 7, n=1 / 7)  # g = 1 / sqrt(1/7 * 7) = 1
    np.testing.assert_allclose(gs(jnp.float32(0.3)), hand.sum(), rtol=1e-5)


def test_pact_gradients_match_the_paper(data, variant):
    x, upstream = data
    fmt = IntFormat(4, signed=False)
    alpha = jnp.float32(1.2)

    def loss(x, a):
        return jnp.sum(upstream * pact(x, a, fmt))

    gx, ga = variant(jax.grad(loss, argnums=(0, 1)))(x, alpha)
    xn, up = np.asarray(x, np.float64), np.asarray(upstream, np.float64)
    step = 1.2 / 15
    y_hand = np.round(np.clip(xn, 0, 1.2) / step) * step
    np.testing.assert_allclose(pact(x, alpha, fmt), y_hand, atol=1e-6)
    chex.assert_trees_all_close(gx, jnp.asarray(up * ((xn >= 0) & (xn < 1.2)), jnp.float32))
    np.testing.assert_allclose(ga, (up * (xn >= 1.2)).sum(), rtol=1e-5, atol=1e-5)
    # Signed variant: clip to [-alpha, alpha], d/d alpha = -1 below -alpha.
    ga_signed = jax.grad(lambda a: jnp.sum(upstream * pact(x, a, IntFormat(4))))(alpha)
    np.testing.assert_allclose(ga_signed, (up * (xn >= 1.2) - up * (xn <= -1.2)).sum(), atol=1e-5)


def test_learned_formats_are_checked():
    x = jnp.ones(4)
    with pytest.raises(ValueError, match="needs an IntFormat"):
        lsq_fake_quant(x, 1.0, FloatFormat(4, 3))
    with pytest.raises(ValueError, match="qmax >= 1"):
        lsq_fake_quant(x, 1.0, IntFormat(1))
    with pytest.raises(ValueError, match="symmetric"):
        lsq_fake_quant(x, 1.0, IntFormat(4, symmetric=False))
    with pytest.raises(ValueError, match="needs an IntFormat"):
        pact(x, 1.0, FloatFormat(4, 3))
