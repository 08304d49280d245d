"""Scale (and zero point) calibration: absmax, percentile and MSE search."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
from archjax.quant.numerics import _check_format, _forward

__all__ = ["CALIBRATION_METHODS", "QParams", "calibrate"]

Array = jax.Array

CALIBRATION_METHODS = ("absmax", "percentile", "mse")
_MSE_RATIOS = 64  # candidate clipping ratios in [_MSE_MIN_RATIO, 1] for the MSE search
_MSE_MIN_RATIO = 0.2
_TINY = float(jnp.finfo(jnp.float32).tiny)  # keeps scale > 0 for all-zero groups


def _range_to_qparams(lo: Array, hi: Array, fmt: IntFormat | FloatFormat) -> QParams:
    """Scale (and zero point) that map the range ``[lo, hi]`` (lo <= 0 <= hi) onto ``fmt``."""
    if isinstance(fmt, FloatFormat):
        absmax = jnp.maximum(-lo, hi)
        return QParams(scale=jnp.maximum(absmax / fmt.max_value, _TINY), zero_point=None)
    if fmt.symmetric:
        if fmt.signed:
            # bits=1 signed has qmax = 0: its only nonzero level is qmin.
            absmax = jnp.maximum(-lo, hi)
            divisor = fmt.qmax if fmt.qmax > 0 else -fmt.qmin
        else:
            absmax, divisor = hi, fmt.qmax
        return QParams(scale=jnp.maximum(absmax / divisor, _TINY), zero_point=None)
    scale = jnp.maximum((hi - lo) / (fmt.qmax - fmt.qmin), _TINY)
    zero_point = jnp.clip(jnp.round(fmt.qmin - lo / scale), fmt.qmin, fmt.qmax).astype(jnp.int32)
    return QParams(scale=scale, zero_point=zero_point)


def _ranges(r: Array, method: str, percentile: float) -> tuple[Array, Array, Array]:
    """Per-row ``lo <= 0 <= hi`` (zero must be representable) and the magnitude ``absmax``."""
    if method == "percentile":
        hi = jnp.percentile(r, percentile, axis=1)
        lo = jnp.percentile(r, 100.0 - percentile, axis=1)
        absmax = jnp.percentile(jnp.abs(r), percentile, axis=1)
    else:
        hi, lo = jnp.max(r, axis=1), jnp.min(r, axis=1)
        absmax = jnp.max(jnp.abs(r), axis=1)
    return jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0), absmax


def _mse_search(r: Array, lo: Array, hi: Array, fmt) -> QParams:
    """Shrinks the range by the ratio that minimizes each row's squared error."""
    ratios = jnp.linspace(_MSE_MIN_RATIO, 1.0, _MSE_RATIOS)

    def error(ratio):
        qp = _range_to_qparams(lo * ratio, hi * ratio, fmt)
        zp = None if qp.zero_point is None else qp.zero_point[:, None]
        y = _forward(r, qp.scale[:, None], zp, fmt, (1,))
        return jnp.sum(jnp.square(y - r), axis=1)

    def body(best, ratio):
        err = error(ratio)
        better = err < best[0]
        return (jnp.where(better, err, best[0]), jnp.where(better, ratio, best[1])), None

    init = (error(jnp.float32(1.0)), jnp.ones(lo.shape, jnp.float32))
    (_, best_ratio), _ = jax.lax.scan(body, init, ratios)
    return _range_to_qparams(lo * best_ratio, hi * best_ratio, fmt)


def calibrate(
    x: Array,
    fmt,
    *,
    granularity: Granularity = PER_TENSOR,
    method: str = "absmax",
    percentile: float = 99.99,
) -> QParams:
    """Quantization parameters for ``x`` in ``fmt`` (Jacob et al., 2018; Wu et al., 2020).

    Integer formats map the calibrated range onto the grid: symmetric signed
    ``scale = absmax / qmax``, unsigned ``scale = max / qmax``, asymmetric
    ``scale = (max - min) / (qmax - qmin)`` with an integer zero point (the range
    always includes 0). Float formats use ``scale = absmax / fmt.max_value``.
    ``method`` picks the range: ``"absmax"`` (the full range), ``"percentile"``
    (the ``percentile``-th percentile of ``|x|``, or of ``x`` and ``-x``), ``"mse"``
    (the clipping ratio in [0.2, 1] of the full range, 64 candidates, that minimizes
    the squared quantization error, per group). Binary formats always use
    ``mean|x|`` (XNOR-Net's optimal scale) and ternary ``mean(|x| : |x| > delta)``
    (TWN's), whatever ``method`` says.

    Args:
        x: the tensor (weights, or an activation batch).
        fmt: the format.
        granularity: ``PerTensor()``, ``PerChannel(axis)`` or ``PerBlock(block_size, axis)``.
        method: one of ``CALIBRATION_METHODS``.
        percentile: in (0, 100], used by ``method="percentile"``.

    Returns:
        ``QParams`` with scales > 0 shaped for ``granularity`` (see :class:`QParams`).

    Example:
        >>> qp = calibrate(w, IntFormat(bits=4), granularity=PerChannel(axis=-1))
    """
    _check_format(fmt)
    _groups.check_granularity(granularity)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method={method!r} is not allowed: choose one of {CALIBRATION_METHODS}")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile!r} is not allowed: it must be in (0, 100]")
    x = jnp.asarray(x).astype(jnp.float32)

    def reduce(fn, v=x):
        return _groups.reduce_groups(v, granularity, fn)

    if isinstance(fmt, BinaryFormat):
        return QParams(scale=jnp.maximum(reduce(jnp.mean, jnp.abs(x)), _TINY))
    if isinstance(fmt, TernaryFormat):
        a = _groups.grouped(jnp.abs(x), granularity)
        axes = _groups.group_axes(x.ndim, granularity)
        above = a > fmt.threshold * jnp.mean(a, axis=axes, keepdims=True)
        total = jnp.sum(a * above, axis=axes, keepdims=True)
        alpha = total / jnp.maximum(jnp.sum(above, axis=axes, keepdims=True), 1)
        return QParams(scale=jnp.maximum(_groups.to_param_shape(alpha, granularity), _TINY))
    if method == "absmax":  # the per-step path: plain reductions, no transpose
        symmetric = isinstance(fmt, FloatFormat) or (fmt.symmetric and fmt.signed)
        if symmetric:
            hi = reduce(jnp.max, jnp.abs(x))
            lo = -hi
        else:
            hi = jnp.maximum(reduce(jnp.max), 0.0)
            lo = jnp.minimum(reduce(jnp.min), 0.0)
        return _range_to_qparams(lo, hi, fmt)
    r, shape = _groups.rows(x, granularity)
    lo, hi, absmax = _ranges(r, method, percentile)
    if method == "percentile" and (isinstance(fmt, FloatFormat) or (fmt.symmetric and fmt.signed)):
        lo, hi = -absmax, absmax
    search = method == "mse"
    qp = _mse_search(r, lo, hi, fmt) if search else _range_to_qparams(lo, hi, fmt)
    zp = None if qp.zero_point is None else qp.zero_point.reshape(shape)
    return QParams(scale=qp.scale.reshape(shape), zero_point=zp)
