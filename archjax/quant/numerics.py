"""Fake quantization, integer/bit codes and their inverse, with explicit STE gradients.

``fake_quant`` rounds a tensor onto a format's grid and returns it in the input's
dtype; its gradient is a straight-through estimator (Bengio et al., 2013) chosen by
name. ``quantize_codes``/``dequantize`` split the same computation at the stored codes,
and ``dequantize(quantize_codes(x)) == fake_quant(x)`` holds bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from archjax.quant import _groups
from archjax.quant._format import PER_TENSOR, Format, Granularity, QParams

__all__ = ["STE_VARIANTS", "dequantize", "fake_quant", "quantize_codes"]

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
    if not isinstance(fmt, Format):
        raise ValueError(
            f"fmt={fmt!r} is not allowed: use IntFormat, FloatFormat, BinaryFormat, TernaryFormat, "
            "NF4Format or MXFormat (any archjax.quant.formats.Format)"
        )


def _check_ste(ste: str) -> None:
    if ste not in STE_VARIANTS:
        raise ValueError(f"ste={ste!r} is not allowed: choose one of {STE_VARIANTS}")


def _reste_slope(v: Array) -> Array:
    """d/dv of ReSTE's sign(v)|v|^(1/o), with the paper's secant near 0 and 0 beyond t."""
    o, interval = _RESTE_O, _RESTE_INTERVAL
    a = jnp.abs(v)
    power = (1.0 / o) * jnp.maximum(a, interval) ** ((1.0 - o) / o)
    slope = jnp.where(a <= interval, interval ** (1.0 / o) / interval, power)
    return jnp.where(a <= _RESTE_T, slope, 0.0)


def _ste_grad(x, scale, zero_point, fmt, axes, ste):
    lo, hi = fmt.range(scale, zero_point)
    inside = ((x >= lo) & (x <= hi)).astype(jnp.float32)
    if ste == "identity":
        return jnp.ones_like(x)
    if ste == "clipped":
        return inside
    # ReSTE. Binary/ternary (no spacing): the paper's estimator on x / scale. Multi-level
    # grids: the same estimator inside each step, on v = 2 * (residual / step) in [-1, 1];
    # its mean over a step is 1, so on average it is the plain STE.
    step = fmt.spacing(x, scale, zero_point)
    if step is None:
        return _reste_slope(x / scale)
    v = 2.0 * (x - fmt.round(x, scale, zero_point, axes)) / step
    return _reste_slope(jnp.clip(v, -1.0, 1.0)) * inside


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fake_quant_grouped(x, scale, zero_point, fmt, axes, ste):
    return fmt.round(x, scale, zero_point, axes)


def _fq_fwd(x, scale, zero_point, fmt, axes, ste):
    saved = None if ste == "identity" else x  # the plain STE needs no residual
    return fmt.round(x, scale, zero_point, axes), (saved, scale, zero_point)


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
    fmt.check_granularity(granularity)
    if not isinstance(qparams, QParams):
        raise ValueError(f"qparams must be a QParams, got {type(qparams).__name__}")
    xg = _groups.grouped(jnp.asarray(x), granularity).astype(jnp.float32)
    scale = _groups.broadcast_param(qparams.scale, x.shape, granularity).astype(jnp.float32)
    zp = _groups.broadcast_param(qparams.zero_point, x.shape, granularity)
    fmt.check_zero_point(zp)
    return xg, scale, zp, _groups.group_axes(x.ndim, granularity)


def fake_quant(
    x: Array, fmt, qparams: QParams, *, granularity: Granularity = PER_TENSOR, ste: str = "identity"
) -> Array:
    """Rounds ``x`` onto ``fmt``'s grid times ``qparams.scale``; gradient by STE.

    Each format rounds (its ``round`` method): integer formats compute
    ``s * (clip(round(x / s) + z, qmin, qmax) - z)`` (round half to even); float
    formats round ``x / s`` to the format (see :class:`FloatFormat` for the inf/NaN
    policy); binary gives ``s * sign(x)`` (XNOR-Net) and ternary
    ``s * sign(x) * (|x| > delta)`` (TWN); NF4 the nearest NormalFloat level times the
    block absmax; MX formats the element type times the block's power-of-two scale.

    Gradient with respect to ``x`` (Bengio et al., 2013 straight-through estimators):
    ``"identity"`` passes it unchanged; ``"clipped"`` passes it only where ``x`` lies
    inside the representable range ``[lo, hi]`` (the format's ``range``; int:
    ``s * (qmin - z)``..``s * (qmax - z)``, float: ``+-s * max``, binary/ternary/NF4:
    ``+-s``); ``"reste"`` uses the rectified STE of Wu et al. (ICCV 2023) with o = 3
    (for multi-level grids applied within each step and zero outside the range). No
    gradient flows into ``qparams``; learn scales with
    :func:`archjax.quant.lsq_fake_quant` or :func:`archjax.quant.pact`.

    Args:
        x: tensor to quantize (any float dtype; computed in float32).
        fmt: a :class:`~archjax.quant.formats.Format` (``IntFormat``, ``FloatFormat``,
            ``BinaryFormat``, ``TernaryFormat``, ``NF4Format``, ``MXFormat``).
        qparams: scale (and zero point) from :func:`archjax.quant.calibrate_tensor`.
        granularity: ``PerTensor()``, ``PerChannel(axis)`` or ``PerBlock(block_size, axis)``;
            must match the one used for calibration (NF4 / MX: ``PerBlock`` of their size).
        ste: one of ``STE_VARIANTS``.

    Returns:
        The fake-quantized tensor, same shape and dtype as ``x``.

    Example:
        >>> fmt = IntFormat(bits=4)
        >>> y = fake_quant(x, fmt, calibrate_tensor(x, fmt))
    """
    _check_ste(ste)
    xg, scale, zp, axes = _prepare(x, fmt, qparams, granularity)
    y = _fake_quant_grouped(xg, scale, zp, fmt, axes, ste)
    return y.reshape(x.shape).astype(x.dtype)


def quantize_codes(
    x: Array, fmt, qparams: QParams, *, granularity: Granularity = PER_TENSOR
) -> Array:
    """Stored codes of ``x``: integers, or bit patterns for float formats.

    Args:
        x: tensor to quantize.
        fmt: the format.
        qparams: scale (and zero point) from :func:`archjax.quant.calibrate_tensor`.
        granularity: as for :func:`fake_quant`.

    Returns:
        Codes of ``x``'s shape in the format's ``code_dtype``: int8/int16 (signed int),
        uint8/uint16 (unsigned int, float bit codes), int8 levels in {-1, 1} / {-1, 0, 1}
        for binary / ternary, uint8 level indices for NF4, element codes for MX (the
        shared scales stay in ``qparams``). Asymmetric codes include the zero point.

    Example:
        >>> codes = quantize_codes(w, IntFormat(bits=4), qp)   # int8 array with values in [-8, 7]
    """
    xg, scale, zp, axes = _prepare(x, fmt, qparams, granularity)
    return fmt.encode(xg, scale, zp, axes).reshape(x.shape)


def dequantize(
    codes: Array, fmt, qparams: QParams, *, granularity: Granularity = PER_TENSOR, dtype=jnp.float32
) -> Array:
    """Values of stored codes: the inverse of :func:`quantize_codes`.

    Args:
        codes: output of :func:`quantize_codes`.
        fmt: the format.
        qparams: the same scale (and zero point) as used to quantize.
        granularity: as for :func:`quantize`.
        dtype: output dtype.

    Returns:
        ``fake_quant(x)`` for the ``x`` the codes came from, bit for bit.

    Example:
        >>> w_hat = dequantize(quantize_codes(w, fmt, qp), fmt, qp)
    """
    _check_format(fmt)
    _groups.check_granularity(granularity)
    fmt.check_granularity(granularity)
    codes = jnp.asarray(codes)
    cg = _groups.grouped(codes, granularity)
    scale = _groups.broadcast_param(qparams.scale, codes.shape, granularity).astype(jnp.float32)
    zp = _groups.broadcast_param(qparams.zero_point, codes.shape, granularity)
    return fmt.decode(cg, scale, zp).reshape(codes.shape).astype(dtype)
