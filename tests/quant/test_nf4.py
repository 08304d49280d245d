"""NF4 (QLoRA NormalFloat), bit for bit against a scalar reference of the construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from archjax.quant import (
    NF4Format,
    PerBlock,
    PerChannel,
    QParams,
    calibrate_tensor,
    dequantize,
    fake_quant,
    quantize_codes,
)
from archjax.quant.nf4 import NF4_LEVELS

BLOCK = 64
N_BLOCKS = 1600  # 102,400 values
FMT = NF4Format()
GRAN = PerBlock(BLOCK, axis=-1)

# bitsandbytes' table (csrc/kernels.cu, functional.get_4bit_type("nf4")), copied here
# as written there so that the test does not read the implementation's constant.
BNB_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]
LEVELS32 = [float(np.float32(v)) for v in BNB_NF4]


def test_levels_are_the_asymmetric_normal_quantiles():
    """QLoRA's construction (bitsandbytes create_normal_map, offset 0.9677083): 8 positive
    and 7 negative quantiles of N(0, 1) plus an exact zero, normalized to [-1, 1]."""
    offset = 0.9677083
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([pos, [0.0], neg]))
    values /= np.abs(values).max()
    np.testing.assert_allclose(values, BNB_NF4, atol=2e-7)  # bitsandbytes computed in float32
    np.testing.assert_array_equal(NF4_LEVELS, np.array(BNB_NF4, np.float32))
    assert NF4_LEVELS[7] == 0.0 and (np.diff(NF4_LEVELS) > 0).all()


# --- the reference: scalar code ----------------------------------------------------------


def ref_code(u: float) -> int:
    """Index of the nearest level to u; a tie goes to the lower level (bitsandbytes' `>`).

    ``2u`` and the sum of two neighbouring float32 levels are exact in float64, so
    ``2u > a + b`` is the exact test ``u > (a + b) / 2``.
    """
    code = 0
    for k in range(15):
        if 2.0 * u > LEVELS32[k] + LEVELS32[k + 1]:
            code = k + 1
    return code


def reference(x: np.ndarray, scales: np.ndarray | None = None):
    """Codes, values and absmax scales of blocks of 64 (per-block absmax, as QLoRA)."""
    codes, values, absmaxes = [], [], []
    for i, block in enumerate(x.reshape(-1, BLOCK)):
        absmax = max(abs(float(v)) for v in block) if scales is None else float(scales[i])
        absmax = max(absmax, float(np.finfo(np.float32).tiny))  # an all-zero block
        absmaxes.append(absmax)
        for v in block:
            u = float(np.float32(v) / np.float32(absmax))  # float32 division, as the paper
            c = 7 if np.isnan(u) else ref_code(u)
            codes.append(c)
            values.append(np.nan if np.isnan(u) else float(np.float32(LEVELS32[c] * absmax)))
    shape = x.shape
    values = np.array(values, np.float32).reshape(shape)
    return np.array(codes).reshape(shape), values, np.array(absmaxes, np.float32)


def nf4_values(seed: int = 0) -> np.ndarray:
    """>= 10**5 float32 values in blocks of 64: exact ties between levels and their
    float32 neighbours (in blocks whose absmax is a power of two), zeros, signed zeros,
    blocks whose maximum is negative, and normal / heavy-tailed random weights."""
    rng = np.random.default_rng(seed)
    mids = ((NF4_LEVELS[:-1].astype(np.float64) + NF4_LEVELS[1:]) / 2).astype(np.float32)
    near = np.concatenate(
        [
            mids,
            np.nextafter(mids, np.float32(np.inf)),
            np.nextafter(mids, np.float32(-np.inf)),
            NF4_LEVELS,
        ]
    )
    blocks = []
    for shift in (-20, -1, 0, 3, 40):
        vals = np.resize(near, (-(-near.size // (BLOCK - 1)) * 4, BLOCK - 1))
        vals = vals * rng.choice([-1, 1], vals.shape)
        head = np.ones((vals.shape[0], 1), np.float32)  # absmax 1: x / absmax is exact
        blocks.append(np.concatenate([head, vals], axis=1) * np.float32(2.0**shift))
    zeros = np.zeros((4, BLOCK), np.float32)
    zeros[1] = -0.0
    zeros[2, ::3] = rng.normal(size=22)
    zeros[3, 0] = -5.0  # the block maximum is negative: code 0 (-1)
    blocks.append(zeros)
    used = sum(b.shape[0] for b in blocks)
    normal = rng.normal(size=(N_BLOCKS - used, BLOCK)) * np.exp2(
        rng.uniform(-30, 30, (N_BLOCKS - used, 1))
    )
    normal[::2] = rng.standard_t(2, size=normal[::2].shape)  # heavy tails: outliers
    blocks.append(normal.astype(np.float32))
    x = np.concatenate(blocks).astype(np.float32)
    assert x.size >= 100_000
    return x


_run = jax.jit(
    lambda x: (
        (qp := calibrate_tensor(x, FMT, granularity=GRAN)).scale,
        quantize_codes(x, FMT, qp, granularity=GRAN),
        fake_quant(x, FMT, qp, granularity=GRAN),
        dequantize(quantize_codes(x, FMT, qp, granularity=GRAN), FMT, qp, granularity=GRAN),
    )
)


def _bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def test_nf4_bit_exact_vs_reference():
    x = nf4_values()
    ref_codes, ref_values, ref_scale = reference(x)
    scale, codes, fq, dq = (np.asarray(a) for a in _run(jnp.asarray(x)))
    np.testing.assert_array_equal(scale[:, 0], ref_scale)  # absmax per block
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(_bits(fq), _bits(ref_values))
    np.testing.assert_array_equal(_bits(dq), _bits(fq))  # decode(encode(x)) == fake_quant(x)
    # Each block maximum is exactly +-absmax (code 15 or 0), and zero stays zero.
    rows = np.flatnonzero(np.abs(x).max(axis=1) > 0)  # not the all-zero blocks
    top = np.argmax(np.abs(x[rows]), axis=1)
    assert set(codes[rows, top].tolist()) == {0, 15}
    assert (codes[x == 0] == 7).all() and (fq[x == 0] == 0).all()


def test_nf4_overflow_nan_and_given_scales():
    """With a scale below absmax the values saturate at +-scale; NaN stays NaN, code of 0."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, BLOCK)).astype(np.float32)
    x[0, :4] = [np.inf, -np.inf, np.nan, 1e30]
    scales = np.full((8, 1), 0.5, np.float32)
    ref_codes, ref_values, _ = reference(x, scales[:, 0])
    qp = QParams(scale=jnp.asarray(scales))
    got = np.asarray(fake_quant(jnp.asarray(x), FMT, qp, granularity=GRAN))
    codes = np.asarray(quantize_codes(jnp.asarray(x), FMT, qp, granularity=GRAN))
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(got, ref_values)  # NaN == NaN position-wise
    assert got[0, 0] == 0.5 and got[0, 1] == -0.5 and np.isnan(got[0, 2]) and codes[0, 2] == 7
    assert np.abs(got[np.isfinite(got)]).max() == 0.5


def test_nf4_granularity_name_and_gradients():
    assert (FMT.name, FMT.bits, FMT.block_size) == ("nf4", 4, 64)
    assert FMT.weight_granularity == PerBlock(64, axis=-2)
    w = jax.random.normal(jax.random.key(0), (128, 4))
    with pytest.raises(ValueError, match=r"nf4 shares one scale per 64 elements"):
        calibrate_tensor(w, FMT, granularity=PerChannel(-1))
    with pytest.raises(ValueError, match="NF4Format.block_size=0"):
        NF4Format(block_size=0)
    small = NF4Format(block_size=32)
    gran = PerBlock(32, axis=0)
    qp = calibrate_tensor(w, small, granularity=gran)
    assert qp.scale.shape == (4, 4)
    for ste in ("identity", "clipped", "reste"):
        g = jax.grad(lambda v, s=ste: jnp.sum(fake_quant(v, small, qp, granularity=gran, ste=s)))(w)
        assert np.isfinite(np.asarray(g)).all()
        if ste == "reste":
            assert 0.5 < float(jnp.mean(g)) < 2.0
    # MSE and percentile calibration pick a clipped absmax (scale <= absmax).
    for method in ("mse", "percentile"):
        s = calibrate_tensor(w, small, granularity=gran, method=method).scale
        assert (np.asarray(s) <= np.asarray(qp.scale) * (1 + 1e-6)).all()


def test_quant_rule_defaults_to_the_formats_own_granularity():
    """A rule that names NF4 or MX and no granularity takes the format's blocks; an int
    rule keeps one scale per output channel; an explicit choice always wins."""
    from archjax.quant import IntFormat, MXFormat, PerChannel, QuantRule

    assert QuantRule(pattern="", weight=FMT).weight_granularity == PerBlock(64, axis=-2)
    mx = MXFormat(element="e2m1")
    assert QuantRule(pattern="", weight=mx).weight_granularity == PerBlock(32, axis=-2)
    assert QuantRule(pattern="", weight=IntFormat(bits=4)).weight_granularity == PerChannel(-1)
    assert QuantRule(pattern="").weight_granularity == PerChannel(-1)
    explicit = QuantRule(pattern="", weight=FMT, weight_granularity=GRAN)
    assert explicit.weight_granularity == GRAN
    assert QuantRule(pattern="", weight=FMT) == QuantRule(
        pattern="", weight=FMT, weight_granularity=PerBlock(64, axis=-2)
    )
