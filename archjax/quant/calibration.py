"""Scale (and zero point) calibration: absmax, percentile and MSE search."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from archjax.quant import _groups
from archjax.quant._format import _TINY, PER_TENSOR, Granularity, QParams
from archjax.quant.numerics import _check_format

__all__ = ["CALIBRATION_METHODS", "QParams", "calibrate", "calibrate_tensor"]

Array = jax.Array

CALIBRATION_METHODS = ("absmax", "percentile", "mse")
_MSE_RATIOS = 64  # candidate clipping ratios in [_MSE_MIN_RATIO, 1] for the MSE search
_MSE_MIN_RATIO = 0.2


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
        qp = fmt.qparams(lo * ratio, hi * ratio)
        zp = None if qp.zero_point is None else qp.zero_point[:, None]
        y = fmt.round(r, qp.scale[:, None], zp, (1,))
        return jnp.sum(jnp.square(y - r), axis=1)

    def body(best, ratio):
        err = error(ratio)
        better = err < best[0]
        return (jnp.where(better, err, best[0]), jnp.where(better, ratio, best[1])), None

    init = (error(jnp.float32(1.0)), jnp.ones(lo.shape, jnp.float32))
    (_, best_ratio), _ = jax.lax.scan(body, init, ratios)
    return fmt.qparams(lo * best_ratio, hi * best_ratio)


def calibrate_tensor(
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
    always includes 0). Float formats use ``scale = absmax / fmt.max_value``, NF4
    ``scale = absmax`` and MX formats the power of two ``2**(floor(log2(absmax)) -
    emax_elem)`` of the OCP MX spec; each format maps the range itself
    (:meth:`~archjax.quant.formats.Format.qparams`).
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
        >>> qp = calibrate_tensor(w, IntFormat(bits=4), granularity=PerChannel(axis=-1))
    """
    _check_format(fmt)
    _groups.check_granularity(granularity)
    fmt.check_granularity(granularity)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method={method!r} is not allowed: choose one of {CALIBRATION_METHODS}")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile!r} is not allowed: it must be in (0, 100]")
    x = jnp.asarray(x).astype(jnp.float32)

    def reduce(fn, v=x):
        return _groups.reduce_groups(v, granularity, fn)

    axes = _groups.group_axes(x.ndim, granularity)
    own = fmt.own_scale(_groups.grouped(x, granularity), axes)
    if own is not None:  # binary, ternary: the paper's scale, whatever the method
        return QParams(scale=jnp.maximum(_groups.to_param_shape(own, granularity), _TINY))
    if method == "absmax":  # the per-step path: plain reductions, no transpose
        if fmt.symmetric_range:
            hi = reduce(jnp.max, fmt.magnitude(x))
            lo = -hi
        else:
            hi = jnp.maximum(reduce(jnp.max), 0.0)
            lo = jnp.minimum(reduce(jnp.min), 0.0)
        return fmt.qparams(lo, hi)
    r, shape = _groups.rows(x, granularity)
    lo, hi, absmax = _ranges(r, method, percentile)
    if method == "percentile" and fmt.symmetric_range:
        lo, hi = -absmax, absmax
    search = method == "mse"
    qp = _mse_search(r, lo, hi, fmt) if search else fmt.qparams(lo, hi)
    zp = None if qp.zero_point is None else qp.zero_point.reshape(shape)
    return QParams(scale=qp.scale.reshape(shape), zero_point=zp)


def calibrate(x: Array, fmt, **kwargs) -> QParams:
    """Deprecated alias of :func:`calibrate_tensor` (kept for one release)."""
    warnings.warn(
        "archjax.quant.calibrate is deprecated; use archjax.quant.calibrate_tensor (a "
        "tensor's scale). The model-level calibration is archjax.quant.calibrate_model.",
        DeprecationWarning,
        stacklevel=2,
    )
    return calibrate_tensor(x, fmt, **kwargs)
