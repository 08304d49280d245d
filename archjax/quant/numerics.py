"""Fake quantization, integer/bit codes and their inverse, with explicit STE gradients.

``fake_quant`` rounds a tensor onto a format's grid and returns it in the input's
dtype; its gradient is a straight-through estimator (Bengio et al., 2013) chosen by
name. ``quantize``/``dequantize`` split the same computation at the stored codes,
and ``dequantize(quantize(x)) == fake_quant(x)`` holds bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from archjax.quant import _groups
from archjax.quant._groups import QParams
from archjax.quant.formats import (
    PER_TENSOR,
    BinaryFormat,
    FloatFormat,
    Granularity,
    IntFormat,
    TernaryFormat,
)

__all__ = ["STE_VARIANTS", "dequantize", "fake_quant", "quantize"]

Array = jax.Array

STE_VARIANTS = ("identity", "clipped", "reste")
# ReSTE (Wu et al., ICCV 2023, "Estimator Meets Equilibrium Perspective"): the
# backward pass differentiates sign(v)|v|^(1/o) instead of sign(v), with a linear
# (secant) piece for |v| < _RESTE_INTERVAL and zero gradient beyond |v| > t. The
# paper anneals o from 1 to 3 and uses t = 1.5; we use the final o.
_RESTE_O = 3.0
_RESTE_T = 1.5
_RESTE_INTERVAL = 0.1


def _check_format(fmt) -> None:
    if not isinstance(fmt, (IntFormat, FloatFormat, BinaryFormat, TernaryFormat)):
        raise ValueError(
            f"fmt={fmt!r} is not allowed: use IntFormat, FloatFormat, BinaryFormat or TernaryFormat"
        )


def _check_ste(ste: str) -> None:
    if ste not in STE_VARIANTS:
        raise ValueError(f"ste={ste!r} is not allowed: choose one of {STE_VARIANTS}")


# XLA flushes float32 subnormals to zero on CPU and GPU, so powers of two below
# 2**-126 are never materialized: small operands are first shifted up by 2**_SHIFT.
_SHIFT = 64


def _pow2(exponent: Array) -> Array:
    """``2.0 ** exponent`` for an int32 exponent in the float32 normal range."""
    return jnp.ldexp(jnp.ones(exponent.shape, jnp.float32), exponent)


def _quantum_exponent(a: Array, fmt: FloatFormat) -> Array:
    """log2 of the format's grid spacing at magnitude ``a`` (unbounded exponent above)."""
    _, e = jnp.frexp(a)  # a = f * 2**e, f in [0.5, 1): floor(log2 a) = e - 1
    return jnp.maximum(e - 1, fmt.min_exponent) - fmt.mantissa_bits


def _times_pow2(a: Array, exponent: Array) -> Array:
    """``a * 2**exponent`` without forming a subnormal power of two."""
    shift = jnp.where(exponent < -100, _SHIFT, 0)
    return a * _pow2(exponent + shift) * _pow2(-shift)


def _over_pow2(a: Array, exponent: Array) -> Array:
    """``a / 2**exponent`` without forming a subnormal power of two."""
    shift = jnp.where(exponent < -100, _SHIFT, 0)
    return (a * _pow2(shift)) / _pow2(exponent + shift)


def _float_quantum(a: Array, fmt: FloatFormat) -> Array:
    """Spacing of the format's grid at magnitude ``a``, at least float32's smallest normal."""
    return _pow2(jnp.maximum(_quantum_exponent(a, fmt), -126))


def _float_round(u: Array, fmt: FloatFormat) -> Array:
    """Rounds ``u`` (already divided by the scale) to ``fmt``: RNE, subnormals, specials."""
    a = jnp.abs(u)
    q_exp = _quantum_exponent(jnp.where(jnp.isfinite(a), a, 0.0), fmt)
    # Exact: scaling by powers of two only moves the binary point.
    r = _times_pow2(jnp.round(_over_pow2(a, q_exp)), q_exp)
    big = jnp.float32(fmt.max_value)
    over = (r > big) | jnp.isinf(a)
    if fmt.saturate:
        over_value = big
    elif fmt.has_inf:
        over_value = jnp.float32(jnp.inf)
    else:
        over_value = jnp.float32(jnp.nan)
    r = jnp.where(over, over_value, r)
    r = jnp.where(jnp.isnan(a), a, r)
    return jnp.copysign(r, u)


def _forward(x: Array, scale: Array, zero_point: Array | None, fmt, axes: tuple[int, ...]) -> Array:
    """Fake-quantized float32 ``x`` (grouped view, broadcast parameters)."""
    if isinstance(fmt, IntFormat):
        z = 0.0 if zero_point is None else zero_point.astype(jnp.float32)
        q = jnp.clip(jnp.round(x / scale) + z, fmt.qmin, fmt.qmax)
        return (q - z) * scale
    if isinstance(fmt, FloatFormat):
        return _float_round(x / scale, fmt) * scale
    return _binary_ternary_levels(x, fmt, axes).astype(jnp.float32) * scale


def _binary_ternary_levels(x: Array, fmt, axes: tuple[int, ...]) -> Array:
    """Levels in {-1, 1} (binary) or {-1, 0, 1} (ternary, threshold over ``axes``)."""
    if isinstance(fmt, BinaryFormat):
        return jnp.where(x >= 0, 1, -1).astype(jnp.int8)
    delta = fmt.threshold * jnp.mean(jnp.abs(x), axis=axes, keepdims=True)
    return (jnp.sign(x) * (jnp.abs(x) > delta)).astype(jnp.int8)


def _clip_range(scale: Array, zero_point: Array | None, fmt) -> tuple[Array, Array]:
    """Smallest and largest representable values (the clipped STE's pass band)."""
    if isinstance(fmt, IntFormat):
        z = 0.0 if zero_point is None else zero_point.astype(jnp.float32)
        return (fmt.qmin - z) * scale, (fmt.qmax - z) * scale
    if isinstance(fmt, FloatFormat):
        return -fmt.max_value * scale, fmt.max_value * scale
    return -scale, scale


def _reste_slope(v: Array) -> Array:
    """d/dv of ReSTE's sign(v)|v|^(1/o), with the paper's secant near 0 and 0 beyond t."""
    o, interval = _RESTE_O, _RESTE_INTERVAL
    a = jnp.abs(v)
    power = (1.0 / o) * jnp.maximum(a, interval) ** ((1.0 - o) / o)
    slope = jnp.where(a <= interval, interval ** (1.0 / o) / interval, power)
    return jnp.where(a <= _RESTE_T, slope, 0.0)


def _ste_grad(x, scale, zero_point, fmt, axes, ste):
    lo, hi = _clip_range(scale, zero_point, fmt)
    inside = ((x >= lo) & (x <= hi)).astype(jnp.float32)
    if ste == "identity":
        return jnp.ones_like(x)
    if ste == "clipped":
        return inside
    # ReSTE. Binary/ternary: the paper's estimator on x / scale. Multi-level grids:
    # the same estimator inside each step, on v = 2 * (residual / step) in [-1, 1];
    # its mean over a step is 1, so on average it is the plain STE.
    if isinstance(fmt, (BinaryFormat, TernaryFormat)):
        return _reste_slope(x / scale)
    y = _forward(x, scale, zero_point, fmt, axes)
    is_int = isinstance(fmt, IntFormat)
    step = scale if is_int else _float_quantum(jnp.abs(x / scale), fmt) * scale
    v = 2.0 * (x - y) / step
    return _reste_slope(jnp.clip(v, -1.0, 1.0)) * inside


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fake_quant_grouped(x, scale, zero_point, fmt, axes, ste):
    return _forward(x, scale, zero_point, fmt, axes)


def _fq_fwd(x, scale, zero_point, fmt, axes, ste):
    saved = None if ste == "identity" else x  # the plain STE needs no residual
    return _forward(x, scale, zero_point, fmt, axes), (saved, scale, zero_point)


def _fq_bwd(fmt, axes, ste, res, g):
    x, scale, zero_point = res
    gx = g if ste == "identity" else g * _ste_grad(x, scale, zero_point, fmt, axes, ste)
    zp_ct = None
    if zero_point is not None:  # integer inputs take float0 cotangents
        zp_ct = np.zeros(zero_point.shape, jax.dtypes.float0)
        if jnp.issubdtype(zero_point.dtype, jnp.floating):
            zp_ct = jnp.zeros_like(zero_point)
    # Quantization parameters are not trained through fake_quant (use LSQ for that).
    return gx, jnp.zeros_like(scale), zp_ct


_fake_quant_grouped.defvjp(_fq_fwd, _fq_bwd)


def _prepare(x, fmt, qparams, granularity):
    _check_format(fmt)
    _groups.check_granularity(granularity)
    if not isinstance(qparams, QParams):
        raise ValueError(f"qparams must be a QParams, got {type(qparams).__name__}")
    xg = _groups.grouped(jnp.asarray(x), granularity).astype(jnp.float32)
    scale = _groups.broadcast_param(qparams.scale, x.shape, granularity).astype(jnp.float32)
    zp = _groups.broadcast_param(qparams.zero_point, x.shape, granularity)
    if isinstance(fmt, IntFormat) and fmt.symmetric and zp is not None:
        raise ValueError(
            f"{fmt.name} is symmetric but qparams has a zero_point; calibrate with this format"
        )
    return xg, scale, zp, _groups.group_axes(x.ndim, granularity)


def fake_quant(
    x: Array, fmt, qparams: QParams, *, granularity: Granularity = PER_TENSOR, ste: str = "identity"
) -> Array:
    """Rounds ``x`` onto ``fmt``'s grid times ``qparams.scale``; gradient by STE.

    Integer formats compute ``s * (clip(round(x / s) + z, qmin, qmax) - z)`` (round
    half to even); float formats round ``x / s`` to the format (see
    :class:`FloatFormat` for the inf/NaN policy); binary gives ``s * sign(x)``
    (XNOR-Net) and ternary ``s * sign(x) * (|x| > delta)`` (TWN).

    Gradient with respect to ``x`` (Bengio et al., 2013 straight-through estimators):
    ``"identity"`` passes it unchanged; ``"clipped"`` passes it only where ``x`` lies
    inside the representable range ``[lo, hi]`` (int: ``s * (qmin - z)``..``s * (qmax - z)``,
    float: ``+-s * max``, binary/ternary: ``+-s``); ``"reste"`` uses the rectified STE
    of Wu et al. (ICCV 2023) with o = 3 (for multi-level grids applied within each
    step and zero outside the range). No gradient flows into ``qparams``; learn
    scales with :func:`archjax.quant.lsq_fake_quant` or :func:`archjax.quant.pact`.

    Args:
        x: tensor to quantize (any float dtype; computed in float32).
        fmt: an ``IntFormat``, ``FloatFormat``, ``BinaryFormat`` or ``TernaryFormat``.
        qparams: scale (and zero point) from :func:`archjax.quant.calibrate`.
        granularity: ``PerTensor()``, ``PerChannel(axis)`` or ``PerBlock(block_size, axis)``;
            must match the one used for calibration.
        ste: one of ``STE_VARIANTS``.

    Returns:
        The fake-quantized tensor, same shape and dtype as ``x``.

    Example:
        >>> fmt = IntFormat(bits=4)
        >>> y = fake_quant(x, fmt, calibrate(x, fmt))
    """
    _check_ste(ste)
    xg, scale, zp, axes = _prepare(x, fmt, qparams, granularity)
    y = _fake_quant_grouped(xg, scale, zp, fmt, axes, ste)
    return y.reshape(x.shape).astype(x.dtype)


def _code_dtype(fmt):
    if isinstance(fmt, IntFormat):
        if fmt.signed:
            return jnp.int8 if fmt.bits <= 8 else jnp.int16
        return jnp.uint8 if fmt.bits <= 8 else jnp.uint16
    if isinstance(fmt, FloatFormat):
        return jnp.uint8 if fmt.bits <= 8 else jnp.uint16
    return jnp.int8


def _float_encode(y: Array, fmt: FloatFormat) -> Array:
    """Bit codes (sign | exponent field | mantissa) of values already on ``fmt``'s grid."""
    e_bits, m_bits = fmt.exponent_bits, fmt.mantissa_bits
    top_field = 2**e_bits - 1
    a = jnp.abs(y)
    finite_a = jnp.where(jnp.isfinite(a), a, 0.0)
    _, e = jnp.frexp(finite_a)
    normal = finite_a >= 2.0**fmt.min_exponent
    exponent = jnp.where(normal, e - 1, fmt.min_exponent)
    field = jnp.where(normal, exponent + fmt.exponent_bias, 0)
    mant = _over_pow2(finite_a, exponent - m_bits) - jnp.where(normal, 2.0**m_bits, 0.0)
    mant = mant.astype(jnp.int32)
    if fmt.has_inf:
        field = jnp.where(jnp.isinf(a), top_field, field)
        mant = jnp.where(jnp.isinf(a), 0, mant)
    nan = jnp.isnan(a)
    if fmt.has_nan:
        nan_mant = 2 ** (m_bits - 1) if fmt.has_inf else 2**m_bits - 1  # IEEE quiet NaN / fn NaN
        field = jnp.where(nan, top_field, field)
        mant = jnp.where(nan, nan_mant, mant)
        sign = jnp.signbit(y).astype(jnp.int32)
    else:  # no NaN code: documented as +0
        field, mant = jnp.where(nan, 0, field), jnp.where(nan, 0, mant)
        sign = jnp.where(nan, 0, jnp.signbit(y).astype(jnp.int32))
    code = (sign << (e_bits + m_bits)) | (field << m_bits) | mant
    return code.astype(_code_dtype(fmt))


def _float_decode(code: Array, fmt: FloatFormat) -> Array:
    """Values (float32) of ``fmt``'s bit codes."""
    e_bits, m_bits = fmt.exponent_bits, fmt.mantissa_bits
    code = code.astype(jnp.int32)
    sign = (code >> (e_bits + m_bits)) & 1
    field = (code >> m_bits) & (2**e_bits - 1)
    mant = code & (2**m_bits - 1)
    normal = field > 0
    exponent = jnp.where(normal, field - fmt.exponent_bias, fmt.min_exponent)
    significand = mant.astype(jnp.float32) + jnp.where(normal, 2.0**m_bits, 0.0)
    value = _times_pow2(significand, exponent - m_bits)
    top = field == 2**e_bits - 1
    if fmt.has_inf:
        value = jnp.where(top & (mant == 0), jnp.inf, value)
        value = jnp.where(top & (mant != 0), jnp.nan, value)
    elif fmt.has_nan:
        value = jnp.where(top & (mant == 2**m_bits - 1), jnp.nan, value)
    return jnp.where(sign == 1, -value, value)


def quantize(x: Array, fmt, qparams: QParams, *, granularity: Granularity = PER_TENSOR) -> Array:
    """Stored codes of ``x``: integers, or bit patterns for float formats.

    Args:
        x: tensor to quantize.
        fmt: the format.
        qparams: scale (and zero point) from :func:`archjax.quant.calibrate`.
        granularity: as for :func:`fake_quant`.

    Returns:
        Codes of ``x``'s shape in the smallest integer dtype that holds them: int8/int16
        (signed int), uint8/uint16 (unsigned int, float bit codes), int8 levels in
        {-1, 1} / {-1, 0, 1} for binary / ternary. Asymmetric codes include the zero point.

    Example:
        >>> codes = quantize(w, IntFormat(bits=4), qp)   # int8 array with values in [-8, 7]
    """
    xg, scale, zp, axes = _prepare(x, fmt, qparams, granularity)
    if isinstance(fmt, IntFormat):
        z = 0.0 if zp is None else zp.astype(jnp.float32)
        codes = jnp.clip(jnp.round(xg / scale) + z, fmt.qmin, fmt.qmax).astype(_code_dtype(fmt))
    elif isinstance(fmt, FloatFormat):
        codes = _float_encode(_float_round(xg / scale, fmt), fmt)
    else:
        codes = _binary_ternary_levels(xg, fmt, axes)
    return codes.reshape(x.shape)


def dequantize(
    codes: Array, fmt, qparams: QParams, *, granularity: Granularity = PER_TENSOR, dtype=jnp.float32
) -> Array:
    """Values of stored codes: the inverse of :func:`quantize`.

    Args:
        codes: output of :func:`quantize`.
        fmt: the format.
        qparams: the same scale (and zero point) as used to quantize.
        granularity: as for :func:`quantize`.
        dtype: output dtype.

    Returns:
        ``fake_quant(x)`` for the ``x`` the codes came from, bit for bit.

    Example:
        >>> w_hat = dequantize(quantize(w, fmt, qp), fmt, qp)
    """
    _check_format(fmt)
    codes = jnp.asarray(codes)
    cg = _groups.grouped(codes, granularity)
    scale = _groups.broadcast_param(qparams.scale, codes.shape, granularity).astype(jnp.float32)
    zp = _groups.broadcast_param(qparams.zero_point, codes.shape, granularity)
    if isinstance(fmt, IntFormat):
        z = 0.0 if zp is None else zp.astype(jnp.float32)
        values = (cg.astype(jnp.float32) - z) * scale
    elif isinstance(fmt, FloatFormat):
        values = _float_decode(cg, fmt) * scale
    else:
        values = cg.astype(jnp.float32) * scale
    return values.reshape(codes.shape).astype(dtype)
