"""Float formats against ml_dtypes casts (bit-exact), the inf/NaN policy, and format validation."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from archjax.quant import (
    MXFP4,
    MXFP8_E5M2,
    MXINT8,
    BinaryFormat,
    FloatFormat,
    Format,
    IntFormat,
    NF4Format,
    PerBlock,
    PerChannel,
    QParams,
    TernaryFormat,
    calibrate_tensor,
    dequantize,
    fake_quant,
    quantize_codes,
)

# (our format, the ml_dtypes type it must reproduce)
FORMATS = {
    "e4m3fn": (FloatFormat(4, 3, finite_only=True), ml_dtypes.float8_e4m3fn),
    "e5m2": (FloatFormat(5, 2), ml_dtypes.float8_e5m2),
    "e3m4": (FloatFormat(3, 4), ml_dtypes.float8_e3m4),
    "e2m3fn": (FloatFormat(2, 3, finite_only=True, has_nan=False), ml_dtypes.float6_e2m3fn),
    "e2m1fn": (FloatFormat(2, 1, finite_only=True, has_nan=False), ml_dtypes.float4_e2m1fn),
}
N_VALUES = 1_000_000
ONE = QParams(scale=jnp.float32(1.0))


def _bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def _representable(dtype) -> np.ndarray:
    """Every finite value of an ml_dtypes type, sorted, one zero."""
    n = 2 ** (ml_dtypes.finfo(dtype).bits)
    values = np.arange(n, dtype=np.uint8).view(dtype).astype(np.float64)
    return np.unique(values[np.isfinite(values)])


def _in_range_values(dtype, rng) -> np.ndarray:
    """10**6 float32 values that round to a finite value of ``dtype``.

    All representable values, all midpoints between neighbours (exact ties), their
    float32 neighbours, the largest finite values, and random values spread over the
    exponent range (half of them subnormal-sized), with both signs.
    """
    grid = _representable(dtype)
    pos = grid[grid >= 0]
    mids = (pos[:-1] + pos[1:]) / 2  # exact in float32: one more mantissa bit
    mids32 = mids.astype(np.float32)
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    normal = float(ml_dtypes.finfo(dtype).smallest_normal)
    big = float(ml_dtypes.finfo(dtype).max)
    special = np.concatenate(
        [
            grid,
            mids32,
            np.nextafter(mids32, np.float32(np.inf)),
            np.nextafter(mids32, np.float32(0)),
            [big, np.nextafter(np.float32(big), np.float32(0))],
        ]
    ).astype(np.float32)
    # Just above max: values that still round down to max (for e4m3fn the tie max + ulp/2
    # too, since the code above max is NaN and ties go to the even max).
    above = np.nextafter(np.float32(big), np.float32(np.inf)) * np.array([1, 1], np.float32)
    above[1] = big + (big - pos[-2]) / 2  # max + half an ulp
    above = above[np.isfinite(above.astype(dtype).astype(np.float32))]
    special = np.concatenate([special, above])
    n_random = N_VALUES - 2 * special.size
    log_u = rng.uniform(np.log2(tiny) - 2, np.log2(big), n_random // 2)
    sub = rng.uniform(0, normal, n_random - n_random // 2)
    random = np.concatenate([np.exp2(log_u), sub]).astype(np.float32)
    random = np.minimum(random, np.float32(big))
    values = np.concatenate([special, -special, random * rng.choice([-1, 1], random.size)])
    assert values.size == N_VALUES
    return values.astype(np.float32)


@pytest.fixture(scope="module")
def jitted_fake_quant():
    return jax.jit(lambda x, fmt: fake_quant(x, fmt, ONE), static_argnums=1)


_codes = jax.jit(lambda x, fmt: quantize_codes(x, fmt, ONE), static_argnums=1)


@pytest.mark.parametrize("name", list(FORMATS))
def test_float_format_bit_exact_vs_ml_dtypes(name, jitted_fake_quant):
    fmt, dtype = FORMATS[name]
    assert fmt.max_value == float(ml_dtypes.finfo(dtype).max)
    assert fmt.smallest_subnormal == float(ml_dtypes.finfo(dtype).smallest_subnormal)
    x = _in_range_values(dtype, np.random.default_rng(0))
    expected = x.astype(dtype)
    assert np.isfinite(expected.astype(np.float32)).all()  # the values are in range
    got = np.asarray(jitted_fake_quant(jnp.asarray(x), fmt))
    mismatch = np.flatnonzero(_bits(got) != _bits(expected.astype(np.float32)))
    assert mismatch.size == 0, (
        f"{mismatch.size} mismatches, e.g. {x[mismatch[:5]]} -> {got[mismatch[:5]]}"
    )
    # The stored codes are ml_dtypes' bit patterns too.
    codes = np.asarray(_codes(jnp.asarray(x[:20000]), fmt))
    np.testing.assert_array_equal(codes, expected[:20000].view(np.uint8))


def _out_of_range(fmt) -> np.ndarray:
    big, half_ulp = fmt.max_value, 2.0 ** (fmt.max_exponent - fmt.mantissa_bits - 1)
    values = [big * 1.5, big * 8, 1e30, 3e38, np.inf, big + 3 * half_ulp]
    if not (fmt.finite_only and fmt.has_nan):  # e4m3fn: max + half an ulp ties down to max
        values.append(big + half_ulp)
    values = np.array(values, np.float32)
    return np.concatenate([values, -values])


@pytest.mark.parametrize("name", list(FORMATS))
def test_saturating_policy(name, jitted_fake_quant):
    fmt, dtype = FORMATS[name]
    x = _out_of_range(fmt)
    got = np.asarray(jitted_fake_quant(jnp.asarray(x), fmt))
    np.testing.assert_array_equal(got, np.sign(x) * np.float32(fmt.max_value))
    nan = np.asarray(jitted_fake_quant(jnp.array([np.nan, -np.nan], jnp.float32), fmt))
    assert np.isnan(nan).all()  # NaN is never hidden by fake_quant
    if not fmt.has_nan:
        # ml_dtypes agrees for out-of-range values (it saturates fp6/fp4) but turns NaN into
        # a signed zero; our codes store +0 (documented in FloatFormat).
        np.testing.assert_array_equal(x.astype(dtype).astype(np.float32), got)
        codes = np.asarray(_codes(jnp.array([np.nan, -np.nan]), fmt))
        np.testing.assert_array_equal(codes, [0, 0])


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e3m4"])
def test_non_saturating_policy_matches_ml_dtypes(name, jitted_fake_quant):
    """saturate=False: overflow and inf go to inf (e5m2, e3m4) or NaN (e4m3fn), like ml_dtypes."""
    fmt, dtype = FORMATS[name]
    fmt = FloatFormat(
        fmt.exponent_bits, fmt.mantissa_bits, finite_only=fmt.finite_only, saturate=False
    )
    x = np.concatenate([_out_of_range(fmt), [np.nan, -np.nan, fmt.max_value, 1.0]]).astype(
        np.float32
    )
    got = np.asarray(jitted_fake_quant(jnp.asarray(x), fmt))
    expected = x.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(got, expected)  # NaN == NaN position-wise in numpy
    assert np.isnan(got).sum() == (fmt.finite_only * (x.size - 4) + 2)
    np.testing.assert_array_equal(
        np.asarray(_codes(jnp.asarray(x), fmt)), x.astype(dtype).view(np.uint8)
    )


def test_non_saturating_needs_inf_or_nan():
    with pytest.raises(ValueError, match="saturate=False"):
        FloatFormat(2, 1, finite_only=True, has_nan=False, saturate=False)


def test_custom_bias_and_names(jitted_fake_quant):
    fmt = FloatFormat(4, 3, bias=11)  # FP8 paper: shift the range down for small tensors
    assert fmt.max_value == 1.875 * 2.0 ** (14 - 11)
    assert fmt.smallest_subnormal == 2.0 ** (1 - 11 - 3)
    x = jnp.array([fmt.smallest_subnormal * 0.5, fmt.smallest_subnormal * 0.51, 1.0, 100.0])
    np.testing.assert_array_equal(
        jitted_fake_quant(x, fmt), [0.0, fmt.smallest_subnormal, 1.0, fmt.max_value]
    )
    assert FORMATS["e4m3fn"][0].name == "fp8_e4m3fn"
    assert FORMATS["e5m2"][0].name == "fp8_e5m2"
    assert fmt.name == "fp8_e4m3_b11"
    assert IntFormat(4).name == "int4"
    assert IntFormat(8, signed=False, symmetric=False).name == "uint8_asym"
    assert (IntFormat(4).bits, FloatFormat(2, 1, finite_only=True).bits) == (4, 4)
    assert (BinaryFormat().bits, TernaryFormat().bits) == (1, 2)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: IntFormat(0), "IntFormat.bits=0"),
        (lambda: IntFormat(33), "IntFormat.bits=33"),
        (lambda: IntFormat(17), "IntFormat.bits=17"),
        (lambda: IntFormat(4.0), "IntFormat.bits=4.0"),
        (lambda: IntFormat(4, signed=False, narrow_range=True), "narrow_range"),
        (lambda: FloatFormat(-1, 3), "FloatFormat.exponent_bits=-1"),
        (lambda: FloatFormat(0, 3, finite_only=True), "FloatFormat.exponent_bits=0"),
        (lambda: FloatFormat(9, 3), "FloatFormat.exponent_bits=9"),
        (lambda: FloatFormat(4, -1), "FloatFormat.mantissa_bits=-1"),
        (lambda: FloatFormat(8, 24), "FloatFormat.mantissa_bits=24"),
        (lambda: FloatFormat(5, 0), "mantissa_bits=0"),
        (lambda: FloatFormat(8, 7, bias=-200), "FloatFormat.bias"),
        (lambda: FloatFormat(4, 3, has_nan=False), "has_nan"),
        (lambda: TernaryFormat(threshold=0.0), "TernaryFormat.threshold"),
        (lambda: PerBlock(0), "PerBlock.block_size=0"),
    ],
)
def test_impossible_formats_raise(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("(", r"\(")) as err:
        make()
    assert "allowed" in str(err.value) or "needs" in str(err.value)


def test_bad_granularity_raises():
    x = jnp.ones((4, 6))
    with pytest.raises(ValueError, match="block_size=4 does not divide"):
        fake_quant(x, IntFormat(4), QParams(scale=jnp.ones((1, 6))), granularity=PerBlock(4, 1))
    with pytest.raises(ValueError, match="PerChannel.axis=2 is out of range"):
        fake_quant(x, IntFormat(4), QParams(scale=jnp.ones(6)), granularity=PerChannel(2))
    with pytest.raises(ValueError, match="ste='soft' is not allowed"):
        fake_quant(x, IntFormat(4), ONE, ste="soft")


@pytest.mark.parametrize(
    "fmt, dtype, smallest",
    [
        (FloatFormat(5, 10), np.float16, 2.0**-26),  # fp16 subnormals (>= 2**-24) and below
        (FloatFormat(8, 7), ml_dtypes.bfloat16, 2.0**-126),  # float32 subnormals flush to 0
    ],
    ids=["fp16", "bf16"],
)
def test_16_bit_formats(fmt, dtype, smallest, jitted_fake_quant):
    rng = np.random.default_rng(1)
    big = float(ml_dtypes.finfo(dtype).max)
    x = np.exp2(rng.uniform(np.log2(smallest), np.log2(big), 100_000)).astype(np.float32)
    x = np.concatenate([x, -x])
    got = np.asarray(jitted_fake_quant(jnp.asarray(x), fmt))
    np.testing.assert_array_equal(_bits(got), _bits(x.astype(dtype).astype(np.float32)))
    tiny = np.array([1e-40, -1e-39], np.float32)  # float32 subnormals: flushed, never NaN
    np.testing.assert_array_equal(np.asarray(jitted_fake_quant(jnp.asarray(tiny), fmt)), 0.0)
    with pytest.raises(ValueError, match="granularity='rows' is not allowed"):
        calibrate_tensor(x, TernaryFormat(), granularity="rows")


EVERY_FORMAT = [
    IntFormat(4),
    IntFormat(8, signed=False, symmetric=False),
    FloatFormat(4, 3, finite_only=True),
    BinaryFormat(),
    TernaryFormat(),
    NF4Format(block_size=32),
    MXFP4,
    MXFP8_E5M2,
    MXINT8,
]


@pytest.mark.parametrize("fmt", EVERY_FORMAT, ids=lambda f: f.name)
def test_every_format_round_trips_through_its_codes(fmt):
    """The generic functions only call Format methods: codes decode to fake_quant bit for bit."""
    assert isinstance(fmt, Format)
    x = jax.random.normal(jax.random.key(0), (64, 5)) * jnp.arange(1, 6)
    gran = PerBlock(32, axis=0)  # every format accepts blocks of 32 along an axis
    qp = calibrate_tensor(x, fmt, granularity=gran)
    y = fake_quant(x, fmt, qp, granularity=gran)
    codes = quantize_codes(x, fmt, qp, granularity=gran)
    assert codes.dtype == fmt.code_dtype and codes.shape == x.shape
    np.testing.assert_array_equal(_bits(dequantize(codes, fmt, qp, granularity=gran)), _bits(y))
    zp = None if qp.zero_point is None else jnp.repeat(qp.zero_point, 32, axis=0)
    lo, hi = fmt.range(jnp.repeat(qp.scale, 32, axis=0), zp)
    assert bool(jnp.all((y >= lo) & (y <= hi)))
