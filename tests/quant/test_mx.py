"""OCP MX block formats, bit for bit against a scalar reference of the spec and ml_dtypes."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from archjax.quant import (
    MXFP4,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    MXFormat,
    PerBlock,
    PerChannel,
    QParams,
    calibrate_tensor,
    dequantize,
    fake_quant,
    quantize_codes,
)

K = 32  # the spec's block size
N_BLOCKS = 3200  # 102,400 values per format

# The element types as the OCP MX v1.0 spec defines them, written out
# here independently of archjax: exponent/mantissa bits, bias, emax, largest normal,
# whether the all-ones exponent field holds inf/NaN (e5m2) or only S.1111.111 is NaN (e4m3).
SPEC = {
    "e4m3": dict(e=4, m=3, bias=7, emax=8, max=448.0, ieee=False),
    "e5m2": dict(e=5, m=2, bias=15, emax=15, max=57344.0, ieee=True),
    "e3m2": dict(e=3, m=2, bias=3, emax=4, max=28.0, ieee=False),
    "e2m3": dict(e=2, m=3, bias=1, emax=2, max=7.5, ieee=False),
    "e2m1": dict(e=2, m=1, bias=1, emax=2, max=6.0, ieee=False),
    "int8": dict(emax=0, max=127 / 64),
}
FORMATS = {
    "e4m3": MXFP8_E4M3,
    "e5m2": MXFP8_E5M2,
    "e3m2": MXFP6_E3M2,
    "e2m3": MXFP6_E2M3,
    "e2m1": MXFP4,
    "int8": MXINT8,
}
ML_DTYPES = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}
GRAN = PerBlock(K, axis=-1)
NORMAL32 = 2.0**-126  # XLA flushes float32 values below this to zero


# --- the reference: scalar code, straight from the spec -------------------------------


def ref_element(u: float, elem: str) -> tuple[float, int]:
    """quantize_to_element_format(u): RNE, saturating normals; returns (value, code)."""
    s = SPEC[elem]
    neg = math.copysign(1.0, u) < 0
    a = abs(u)
    if elem == "int8":
        k = round(a * 64)  # Python's round: ties to even; a * 64 is exact
        k = min(k, 127)
        k = -k if neg else k
        return k / 64, k
    emin = 1 - s["bias"]
    if a == 0:
        q = 0.0
    else:
        e = max(math.frexp(a)[1] - 1, emin)  # floor(log2(a)), at least the subnormal exponent
        quantum = 2.0 ** (e - s["m"])
        q = round(a / quantum) * quantum  # a / quantum is exact in float64
        q = min(q, s["max"])  # saturate ("clamping normal numbers")
    if q == 0:
        field, mant = 0, 0
    else:
        e = math.frexp(q)[1] - 1
        if e < emin:  # subnormal
            field, mant = 0, int(q / 2.0 ** (emin - s["m"]))
        else:
            field, mant = e + s["bias"], int(q / 2.0 ** (e - s["m"])) - 2 ** s["m"]
    code = (int(neg) << (s["e"] + s["m"])) | (field << s["m"]) | mant
    return (-q if neg else q), code


def ref_block(block: np.ndarray, elem: str) -> tuple[int, list[int], list[float]]:
    """The spec's conversion of one block: (E8M0 byte, element codes, values)."""
    if not all(math.isfinite(float(v)) for v in block):
        return 0xFF, [0] * len(block), [math.nan] * len(block)  # X = NaN
    amax = max(abs(float(v)) for v in block)
    if amax == 0:
        shared = -127
    else:
        shared = math.frexp(amax)[1] - 1 - SPEC[elem]["emax"]  # floor(log2(amax)) - emax_elem
        shared = max(-127, min(127, shared))
    x_scale = 2.0**shared
    codes, values = [], []
    for v in block:
        value, code = ref_element(float(v) / x_scale, elem)  # exact: X is a power of two
        codes.append(code)
        values.append(value * x_scale)
    return shared + 127, codes, values


def reference(x: np.ndarray, elem: str):
    bytes_, codes, values = [], [], []
    for block in x.reshape(-1, K):
        b, c, v = ref_block(block, elem)
        bytes_.append(b)
        codes.extend(c)
        values.extend(v)
    values = np.array(values, np.float64).astype(np.float32).reshape(x.shape)
    return np.array(bytes_).reshape(-1, 1), np.array(codes).reshape(x.shape), values


# --- test data -------------------------------------------------------------------------


def _grid(elem: str) -> np.ndarray:
    """Every non-negative element value, enumerated from the spec's parameters."""
    s = SPEC[elem]
    if elem == "int8":
        return np.arange(128) / 64
    emin = 1 - s["bias"]
    values = [
        mant * 2.0 ** (emin - s["m"])
        if field == 0
        else (1 + mant / 2 ** s["m"]) * 2.0 ** (field - s["bias"])
        for field in range(2 ** s["e"])
        for mant in range(2 ** s["m"])
    ]
    return np.unique([v for v in values if v <= s["max"]])


def mx_values(elem: str, seed: int = 0) -> np.ndarray:
    """>= 10**5 float32 values in blocks of 32: exact ties and their neighbours, zeros and
    signed zeros, block maxima at, just below and above powers of two and above the
    element's max normal (saturation), blocks with NaN/inf, tiny and huge blocks, random."""
    rng = np.random.default_rng(seed)
    s = SPEC[elem]
    grid = _grid(elem)
    mids = ((grid[:-1] + grid[1:]) / 2).astype(np.float32)  # exact ties (one more bit)
    blocks = []
    for shift in (-40, -3, 0, 5, 60):
        pow2 = np.float32(2.0**shift)
        # Block max = max normal * 2**shift, so X = 2**(shift) exactly and the ties stay ties.
        for vals in (
            mids,
            np.nextafter(mids, np.float32(np.inf)),
            np.nextafter(mids, np.float32(0)),
        ):
            vals = np.resize(vals, (-(-vals.size // (K - 1)), K - 1))
            head = np.full((vals.shape[0], 1), s["max"], np.float32)
            sign = rng.choice([-1, 1], vals.shape).astype(np.float32)
            blocks.append(np.concatenate([head, vals * sign], axis=1) * pow2)
    zeros = np.zeros((4, K), np.float32)
    zeros[1] = -0.0
    zeros[2, ::2] = rng.normal(size=K // 2)
    zeros[3, 5] = -1e-3
    blocks.append(zeros)
    # Block maxima: a power of two, just below it, just above the element range (saturates).
    amax = [
        1.0,
        np.nextafter(np.float32(2.0), np.float32(0)),
        s["max"] * 1.1,
        2.0 ** (s["emax"] + 1) * 0.999,
    ]
    for a in amax:
        b = rng.uniform(-1, 1, (8, K)).astype(np.float32) * np.float32(a)
        b[:, 0] = np.float32(a) * rng.choice([-1, 1], 8)
        blocks.append(b)
    # Specials: NaN / inf in a block (the scale becomes NaN), near float32's max.
    special = rng.normal(size=(4, K)).astype(np.float32)
    special[0, 3], special[1, 7], special[2, 0] = np.nan, np.inf, -np.inf
    special[3] = rng.uniform(-3e38, 3e38, K).astype(np.float32)
    blocks.append(special)
    used = sum(b.shape[0] for b in blocks)
    n_random = N_BLOCKS - used
    random = rng.standard_t(3, size=(n_random, K)).astype(np.float32)
    random *= np.exp2(rng.integers(-60, 60, (n_random, 1))).astype(np.float32)
    blocks.append(random)
    x = np.concatenate(blocks).astype(np.float32)
    assert x.size >= 100_000 and x.shape == (N_BLOCKS, K)
    return x


def tiny_blocks(elem: str) -> np.ndarray:
    """Blocks whose shared exponent clamps at -127 (their values would be float32 subnormals)."""
    top = 2.0 ** (SPEC[elem]["emax"] - 127)  # amax below this: floor(log2) - emax < -127
    x = np.linspace(0.25, 0.99, 2 * K).reshape(2, K) * top
    return np.maximum(x, NORMAL32).astype(np.float32)


_run = jax.jit(
    lambda x, fmt: (
        (qp := calibrate_tensor(x, fmt, granularity=GRAN)).scale,
        quantize_codes(x, fmt, qp, granularity=GRAN),
        fake_quant(x, fmt, qp, granularity=GRAN),
        dequantize(quantize_codes(x, fmt, qp, granularity=GRAN), fmt, qp, granularity=GRAN),
        fmt.encode_scale(qp.scale),
    ),
    static_argnums=1,
)


def _bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


@functools.cache
def _case(elem: str):
    """Test values, the reference's answer and ours (computed once per element type)."""
    x = mx_values(elem)
    ours = [np.asarray(a) for a in _run(jnp.asarray(x), FORMATS[elem])]
    return x, reference(x, elem), ours


@pytest.mark.parametrize("elem", list(FORMATS))
def test_mx_bit_exact_vs_spec_reference(elem):
    x, (ref_bytes, ref_codes, ref_values), (scale, codes, fq, dq, scale_bytes) = _case(elem)
    np.testing.assert_array_equal(scale_bytes, ref_bytes)  # E8M0 shared scales
    np.testing.assert_array_equal(codes.astype(np.int64), ref_codes)
    # Values: bit for bit; NaN exactly where the spec has NaN (blocks with NaN/inf).
    nan = np.isnan(ref_values)
    assert nan.sum() == 3 * K and np.array_equal(np.isnan(fq), nan)
    ok = ~nan & ((np.abs(ref_values) >= NORMAL32) | (ref_values == 0))
    assert ok.sum() > 0.9 * x.size
    mismatch = np.flatnonzero(_bits(fq)[ok] != _bits(ref_values)[ok])
    assert mismatch.size == 0, f"{mismatch.size} mismatches, e.g. {x[ok][mismatch[:4]]}"
    # decode(encode(x)) == fake_quant(x), NaN blocks included.
    np.testing.assert_array_equal(_bits(dq[~nan]), _bits(fq[~nan]))
    assert np.isnan(dq[nan]).all()
    # Block maxima never exceed the element range and ties went to even (covered above).
    assert np.all(np.abs(fq[~nan]) <= SPEC[elem]["max"] * np.repeat(scale, K, axis=1)[~nan])


@pytest.mark.parametrize("elem", list(ML_DTYPES))
def test_mx_elements_and_scales_match_ml_dtypes(elem):
    x, _, (scale, codes, fq, _, scale_bytes) = _case(elem)
    dtype = ML_DTYPES[elem]
    assert float(ml_dtypes.finfo(dtype).max) == SPEC[elem]["max"] == FORMATS[elem].max_element
    finite = np.isfinite(scale[:, 0])
    # ml_dtypes' E8M0 cast of our power-of-two scales gives the same bytes.
    np.testing.assert_array_equal(
        scale.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8), scale_bytes
    )
    # Elements: ml_dtypes' RNE cast of x / X (clipped: ml_dtypes does not saturate fp8).
    u = x[finite] / np.repeat(scale[finite], K, axis=1)
    big = SPEC[elem]["max"]
    want = np.clip(u, -big, big).astype(dtype)
    np.testing.assert_array_equal(codes[finite], want.view(np.uint8))
    values = want.astype(np.float32) * np.repeat(scale[finite], K, axis=1)
    np.testing.assert_array_equal(_bits(fq[finite]), _bits(values))


@pytest.mark.parametrize("elem", list(ML_DTYPES))  # INT8 clamps only for all-zero blocks
def test_tiny_blocks_clamp_the_scale_exactly(elem):
    """Shared exponents below -127 clamp to E8M0's 0x00; codes stay exact (values flush)."""
    x = tiny_blocks(elem)
    ref_bytes, ref_codes, _ = reference(x, elem)
    scale, codes, *_, scale_bytes = _run(jnp.asarray(x), FORMATS[elem])
    np.testing.assert_array_equal(np.asarray(scale_bytes), ref_bytes)
    assert (np.asarray(scale_bytes) == 0).all()
    np.testing.assert_array_equal(np.asarray(codes).astype(np.int64), ref_codes)


def test_e8m0_decoding_matches_ml_dtypes():
    every = np.arange(256, dtype=np.uint8)
    want = every.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    got = np.asarray(MXFP4.decode_scale(jnp.asarray(every)))
    np.testing.assert_array_equal(_bits(got[:255]), _bits(want[:255]))
    assert np.isnan(got[255]) and np.isnan(want[255])
    np.testing.assert_array_equal(np.asarray(MXFP4.encode_scale(jnp.asarray(got))), every)


def test_mxint8_decodes_every_code():
    codes = np.arange(-128, 128, dtype=np.int8)
    got = dequantize(jnp.asarray(codes), MXINT8, QParams(scale=jnp.ones(8)), granularity=GRAN)
    np.testing.assert_array_equal(np.asarray(got), codes / 64.0)


def test_names_bits_and_validation():
    assert [f.name for f in FORMATS.values()] == [
        "mxfp8_e4m3",
        "mxfp8_e5m2",
        "mxfp6_e3m2",
        "mxfp6_e2m3",
        "mxfp4_e2m1",
        "mxint8",
    ]
    assert [f.bits for f in FORMATS.values()] == [8, 8, 6, 6, 4, 8]
    assert [f.emax_elem for f in FORMATS.values()] == [SPEC[e]["emax"] for e in FORMATS]
    with pytest.raises(ValueError, match="MXFormat.element='e4m4' is not allowed"):
        MXFormat("e4m4")
    with pytest.raises(ValueError, match="MXFormat.block_size=0"):
        MXFormat("e2m1", block_size=0)
    x = jnp.ones((4, 64))
    with pytest.raises(ValueError, match=r"mxfp4_e2m1 shares one scale per 32 elements"):
        calibrate_tensor(x, MXFP4, granularity=PerChannel(-1))
    with pytest.raises(ValueError, match=r"use PerBlock\(block_size=32"):
        fake_quant(x, MXFP4, QParams(scale=jnp.ones((4, 4))), granularity=PerBlock(16))


@pytest.mark.parametrize("ste", ["identity", "clipped", "reste"])
@pytest.mark.parametrize("fmt", [MXFP4, MXINT8], ids=lambda f: f.name)
def test_mx_gradients(fmt, ste):
    x = jax.random.normal(jax.random.key(0), (64, 8)) * 3
    gran = fmt.weight_granularity
    qp = calibrate_tensor(x, fmt, granularity=gran)
    g = jax.grad(lambda v: jnp.sum(fake_quant(v, fmt, qp, granularity=gran, ste=ste)))(x)
    assert g.shape == x.shape and np.isfinite(np.asarray(g)).all()
    lo, hi = fmt.range(jnp.repeat(qp.scale, 32, axis=0), None)
    inside = (x >= lo) & (x <= hi)
    if ste == "clipped":
        np.testing.assert_array_equal(np.asarray(g), np.asarray(inside, np.float32))
    if ste == "reste":  # zero outside the range, positive and averaging ~1 inside
        assert (np.asarray(g)[~np.asarray(inside)] == 0).all()
        assert 0.5 < float(jnp.mean(g[inside])) < 2.0
