"""Integer quantizer invariants (with and without jit), STE gradients, codes round trip."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax.quant import (
    BinaryFormat,
    FloatFormat,
    IntFormat,
    PerBlock,
    PerChannel,
    PerTensor,
    QParams,
    TernaryFormat,
    calibrate_tensor,
    dequantize,
    fake_quant,
    quantize_codes,
)

INT_FORMATS = [
    IntFormat(1),
    IntFormat(2, signed=False),
    IntFormat(3, symmetric=False),
    IntFormat(4, narrow_range=True),
    IntFormat(8, signed=False, symmetric=False),
    IntFormat(16),
]
GRANULARITIES = [PerTensor(), PerChannel(-1), PerBlock(16, 0)]
SHAPE = (64, 6)


def _ids(values):
    return [getattr(v, "name", None) or repr(v) for v in values]


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def variant(request):
    """chex-style variants: the function as is, or under jax.jit."""
    return jax.jit if request.param else (lambda f: f)


@pytest.fixture(scope="module")
def x():
    key_a, key_b = jax.random.split(jax.random.key(0))
    # Shifted so that asymmetric formats have a one-sided-ish range, plus a few outliers.
    base = jax.random.normal(key_a, SHAPE) + 0.7
    return base + 4.0 * jax.random.bernoulli(key_b, 0.02, SHAPE)


def _expand(p, granularity, shape=SHAPE):
    """Broadcasts a per-group parameter to the tensor's shape, by hand (numpy)."""
    p = np.asarray(p, np.float64)
    if isinstance(granularity, PerBlock):
        return np.repeat(p, granularity.block_size, axis=granularity.axis)
    return np.broadcast_to(p, shape)


def _groups(a, granularity):
    """The elements of each scale group, as a list of 1-D numpy arrays."""
    a = np.asarray(a)
    if isinstance(granularity, PerTensor):
        return [a.ravel()]
    if isinstance(granularity, PerChannel):
        return [a[:, c] for c in range(a.shape[1])]
    b = granularity.block_size
    return [a[i : i + b, c] for i in range(0, a.shape[0], b) for c in range(a.shape[1])]


# Every format x granularity under jit; a few of them also without jit (eager is slow).
_CASES = [(f, g, True) for f in INT_FORMATS for g in GRANULARITIES] + [
    (IntFormat(1), PerChannel(-1), False),
    (IntFormat(3, symmetric=False), PerBlock(16, 0), False),
    (IntFormat(8, signed=False, symmetric=False), PerTensor(), False),
    (IntFormat(16), PerTensor(), False),
]


@pytest.mark.parametrize(
    "fmt, granularity, use_jit",
    _CASES,
    ids=[f"{f.name}-{g}-{'jit' if j else 'eager'}" for f, g, j in _CASES],
)
def test_int_invariants(fmt, granularity, use_jit, x):
    qp = calibrate_tensor(x, fmt, granularity=granularity)
    wide = 1.5 * x  # some elements fall outside the representable range

    def run(v):
        y = fake_quant(v, fmt, qp, granularity=granularity)
        again = fake_quant(y, fmt, qp, granularity=granularity)
        codes = quantize_codes(v, fmt, qp, granularity=granularity)
        back = dequantize(codes, fmt, qp, granularity=granularity)
        grads = {
            ste: jax.grad(
                lambda u, ste=ste: jnp.sum(fake_quant(u, fmt, qp, granularity=granularity, ste=ste))
            )(v)
            for ste in ("identity", "clipped")
        }
        return y, again, codes, back, grads

    y, again, codes, back, grads = (jax.jit(run) if use_jit else run)(wide)
    chex.assert_trees_all_equal(again, y)  # idempotent
    chex.assert_trees_all_equal(back, y)  # dequantize(quantize_codes(x)) == fake_quant(x)
    chex.assert_shape(codes, SHAPE)
    assert codes.dtype == (
        jnp.dtype(("int" if fmt.signed else "uint") + ("8" if fmt.bits <= 8 else "16"))
    )
    codes = np.asarray(codes, np.int64)
    assert codes.min() >= fmt.qmin and codes.max() <= fmt.qmax
    for group in _groups(y, granularity):
        assert np.unique(group).size <= 2**fmt.bits

    # Hand-computed representable range [lo, hi] per element.
    s = _expand(qp.scale, granularity)
    z = 0.0 if qp.zero_point is None else _expand(qp.zero_point, granularity)
    lo, hi = (fmt.qmin - z) * s, (fmt.qmax - z) * s
    v = np.asarray(wide, np.float64)
    inside = (v >= lo) & (v <= hi)
    assert inside.any() and (~inside).any()
    err = np.abs(np.asarray(y, np.float64) - v)
    bound = s / 2 * (1 + 1e-5) + 1e-6 * np.abs(v)  # scale / 2, up to float32 rounding
    assert (err[inside] <= bound[inside]).all()
    np.testing.assert_array_equal(np.asarray(y)[v > hi], (hi.astype(np.float32))[v > hi])
    chex.assert_trees_all_equal(grads["identity"], jnp.ones(SHAPE))
    chex.assert_trees_all_equal(grads["clipped"], jnp.asarray(inside, jnp.float32))


@pytest.mark.parametrize("fmt", [f for f in INT_FORMATS if f.bits <= 8], ids=_ids(INT_FORMATS[:-1]))
def test_every_level_is_reached_and_no_more(fmt, variant):
    x = jnp.linspace(-5.0, 5.0, 4097)
    qp = calibrate_tensor(x, fmt)
    y = variant(lambda v: fake_quant(v, fmt, qp))(x * 1.2)
    assert np.unique(np.asarray(y)).size == fmt.qmax - fmt.qmin + 1  # 2**k (2**k - 1 narrow)


def test_binary_is_xnor_and_ternary_is_twn(x, variant):
    w = np.asarray(x)
    qp = calibrate_tensor(x, BinaryFormat(), granularity=PerChannel(-1))
    alpha = np.abs(w).mean(0)  # XNOR-Net: per-filter mean |w|
    np.testing.assert_allclose(np.asarray(qp.scale).reshape(-1), alpha, rtol=1e-6)
    y = variant(lambda v: fake_quant(v, BinaryFormat(), qp, granularity=PerChannel(-1)))(x)
    np.testing.assert_allclose(y, np.where(w >= 0, 1, -1) * alpha, rtol=1e-6)

    t = TernaryFormat(threshold=0.7)
    qp = calibrate_tensor(x, t)
    delta = 0.7 * np.abs(w).mean()
    mask = np.abs(w) > delta
    np.testing.assert_allclose(float(qp.scale), np.abs(w)[mask].mean(), rtol=1e-6)
    y = variant(lambda v: fake_quant(v, t, qp))(x)
    np.testing.assert_allclose(y, np.sign(w) * mask * np.abs(w)[mask].mean(), rtol=1e-6)
    codes = quantize_codes(x, t, qp)
    chex.assert_trees_all_equal(dequantize(codes, t, qp), y)


@pytest.mark.parametrize(
    "fmt",
    [IntFormat(4), FloatFormat(4, 3, finite_only=True), BinaryFormat()],
    ids=["int4", "fp8", "binary"],
)
def test_reste_gradient(fmt):
    """ReSTE: zero outside the clip range, positive inside, and 1 on average over a step."""
    scale = 0.25
    qp = QParams(scale=jnp.float32(scale))
    if isinstance(fmt, IntFormat):
        x = jnp.linspace(-2.0, 1.0, 30001)  # whole steps inside [-8s, 7s] = [-2, 1.75]
    elif isinstance(fmt, FloatFormat):
        x = jnp.linspace(1.0, 2.0, 30001) * scale  # one binade, uniform steps
    else:
        x = jnp.linspace(-1.0, 1.0, 30001) * scale  # sign(v)|v|^(1/3) rises by 2 over [-1, 1]
    grad_fn = jax.jit(jax.grad(lambda v: jnp.sum(fake_quant(v, fmt, qp, ste="reste"))))
    grad = grad_fn(x)
    assert (np.asarray(grad) > 0).all()
    np.testing.assert_allclose(np.mean(np.asarray(grad)), 1.0, atol=0.01)
    outside = jnp.array([-3.0, 3.0]) * (1.0 if isinstance(fmt, IntFormat) else 1000.0)
    g_out = grad_fn(outside)
    chex.assert_trees_all_equal(g_out, jnp.zeros(2))


def test_dtype_shape_and_no_qparam_gradient():
    x = jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16).reshape(3, 4)

    @jax.jit
    def run(x):
        qp = calibrate_tensor(x, IntFormat(8))
        loss = lambda s: jnp.sum(fake_quant(x, IntFormat(8), QParams(scale=s)))
        return fake_quant(x, IntFormat(8), qp), jax.grad(loss)(qp.scale)

    y, g = run(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (3, 4)
    assert float(g) == 0.0
