"""Number formats and granularities for quantization, as frozen keyword-only dataclasses.

A format says *which values* a quantized tensor may take (before scaling) and owns
its numerics (rounding, codes, range, calibration: the methods of :class:`Format`);
a granularity says *which elements share* a scale. Both are plain data, checked at
construction, so an impossible choice fails at once with a message that names the
field and the allowed range. This module holds the integer, binary and ternary
formats and re-exports the others (``floats``, ``nf4``, ``mx``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from archjax.quant._format import (
    _TINY,
    PER_TENSOR,
    Format,
    Granularity,
    PerBlock,
    PerChannel,
    PerTensor,
    QParams,
    check_bool,
    check_int,
)
from archjax.quant.floats import FloatFormat
from archjax.quant.mx import MXFP4, MXFP6_E2M3, MXFP6_E3M2, MXFP8_E4M3, MXFP8_E5M2, MXINT8, MXFormat
from archjax.quant.nf4 import NF4Format

__all__ = [
    "MXFP4",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "MXINT8",
    "PER_TENSOR",
    "BinaryFormat",
    "FloatFormat",
    "Format",
    "Granularity",
    "IntFormat",
    "MXFormat",
    "NF4Format",
    "PerBlock",
    "PerChannel",
    "PerTensor",
    "TernaryFormat",
]

Array = jax.Array

_MAX_INT_BITS = 16  # codes are stored in int8/int16 (or the unsigned types)


@dataclasses.dataclass(frozen=True)
class IntFormat(Format):
    """Uniform integer grid ``{qmin, ..., qmax}`` times a scale (Jacob et al., 2018).

    Symmetric formats have no zero point (``x ~ s * q``); asymmetric formats add an
    integer zero point (``x ~ s * (q - z)``) so that a one-sided range uses all levels.

    Example:
        >>> IntFormat(bits=4).qmin, IntFormat(bits=4).qmax
        (-8, 7)
    """

    bits: int  # storage bits per element, 1..16
    _: dataclasses.KW_ONLY
    signed: bool = True  # grid [-2**(b-1), 2**(b-1)-1] if True, else [0, 2**b - 1]
    symmetric: bool = True  # no zero point; asymmetric formats calibrate one
    narrow_range: bool = False  # drop the most negative code (signed only): [-(2**(b-1)-1), ...]

    def __post_init__(self):
        check_int("IntFormat.bits", self.bits, 1, _MAX_INT_BITS)
        for field in ("signed", "symmetric", "narrow_range"):
            check_bool(f"IntFormat.{field}", getattr(self, field))
        if self.narrow_range and not self.signed:
            raise ValueError("IntFormat.narrow_range=True is only allowed with signed=True")
        if self.narrow_range and self.bits < 2:
            raise ValueError("IntFormat.narrow_range=True needs bits >= 2 (1 bit leaves one level)")

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + int(self.narrow_range)

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def name(self) -> str:
        """Short name, e.g. ``int4``, ``uint8``, ``int8_asym``."""
        base = f"{'' if self.signed else 'u'}int{self.bits}"
        return base + ("" if self.symmetric else "_asym") + ("_narrow" if self.narrow_range else "")

    @property
    def code_dtype(self):
        """int8/int16 (signed) or uint8/uint16 (unsigned)."""
        if self.signed:
            return jnp.int8 if self.bits <= 8 else jnp.int16
        return jnp.uint8 if self.bits <= 8 else jnp.uint16

    @property
    def code_offset(self) -> int:
        """``-qmin``: codes are integers, not bit patterns."""
        return -self.qmin

    @property
    def symmetric_range(self) -> bool:
        """Symmetric signed formats calibrate on ``+-absmax``, the others on ``[min, max]``."""
        return self.symmetric and self.signed

    def check_zero_point(self, zero_point) -> None:
        """Symmetric formats take no zero point."""
        if self.symmetric and zero_point is not None:
            raise ValueError(
                f"{self.name} is symmetric but qparams has a zero_point; calibrate with this format"
            )

    def qparams(self, lo, hi) -> QParams:
        """Symmetric: ``absmax / qmax`` (``max / qmax`` unsigned); asymmetric: ``(hi - lo) /
        (qmax - qmin)`` and the integer zero point that maps 0 exactly."""
        if self.symmetric:
            if self.signed:
                # bits=1 signed has qmax = 0: its only nonzero level is qmin.
                absmax = jnp.maximum(-lo, hi)
                divisor = self.qmax if self.qmax > 0 else -self.qmin
            else:
                absmax, divisor = hi, self.qmax
            return QParams(scale=jnp.maximum(absmax / divisor, _TINY), zero_point=None)
        scale = jnp.maximum((hi - lo) / (self.qmax - self.qmin), _TINY)
        zero_point = jnp.round(self.qmin - lo / scale)
        zero_point = jnp.clip(zero_point, self.qmin, self.qmax).astype(jnp.int32)
        return QParams(scale=scale, zero_point=zero_point)

    def _levels(self, x, scale, zero_point):
        z = 0.0 if zero_point is None else zero_point.astype(jnp.float32)
        return jnp.clip(jnp.round(x / scale) + z, self.qmin, self.qmax), z

    def round(self, x, scale, zero_point, axes):
        """``s * (clip(round(x / s) + z, qmin, qmax) - z)``, round half to even."""
        q, z = self._levels(x, scale, zero_point)
        return (q - z) * scale

    def encode(self, x, scale, zero_point, axes):
        """``clip(round(x / s) + z, qmin, qmax)`` as integers."""
        return self._levels(x, scale, zero_point)[0].astype(self.code_dtype)

    def decode(self, codes, scale, zero_point):
        """``(q - z) * s``."""
        z = 0.0 if zero_point is None else zero_point.astype(jnp.float32)
        return (codes.astype(jnp.float32) - z) * scale

    def range(self, scale, zero_point):
        """``s * (qmin - z)`` .. ``s * (qmax - z)``."""
        z = 0.0 if zero_point is None else zero_point.astype(jnp.float32)
        return (self.qmin - z) * scale, (self.qmax - z) * scale

    def spacing(self, x, scale, zero_point):
        """The scale: the grid is uniform."""
        return scale


class _LevelFormat(Format):
    """Two or three levels times a scale the format computes itself (binary, ternary)."""

    def levels(self, x: Array, axes: tuple[int, ...]) -> Array:
        """The int8 levels of ``x``; a threshold may depend on the group (``axes``)."""
        raise NotImplementedError

    @property
    def code_dtype(self):
        """int8 levels."""
        return jnp.int8

    @property
    def code_offset(self) -> None:
        """Levels, not bit patterns: stored unpacked."""
        return None

    def round(self, x, scale, zero_point, axes):
        """``levels(x) * scale``."""
        return self.levels(x, axes).astype(jnp.float32) * scale

    def encode(self, x, scale, zero_point, axes):
        """The levels."""
        return self.levels(x, axes)

    def decode(self, codes, scale, zero_point):
        """``levels * scale``."""
        return codes.astype(jnp.float32) * scale

    def range(self, scale, zero_point):
        """``+-scale``."""
        return -scale, scale

    def spacing(self, x, scale, zero_point):
        """None: ReSTE applies the paper's estimator to ``x / scale``."""
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class BinaryFormat(_LevelFormat):
    """``sign(x) * mean|x|`` with a mean over each scale group (XNOR-Net, Rastegari et al. 2016).

    ``sign(0)`` is taken as +1 so that every element gets one of two levels.

    Example:
        >>> BinaryFormat().bits
        1
    """

    @property
    def bits(self) -> int:
        """Storage bits per element."""
        return 1

    @property
    def name(self) -> str:
        """``binary``."""
        return "binary"

    def levels(self, x, axes):
        """``sign(x)`` in {-1, 1}, with ``sign(0) = 1``."""
        return jnp.where(x >= 0, 1, -1).astype(jnp.int8)

    def own_scale(self, x, axes):
        """``mean|x|`` over each group (XNOR-Net's optimal scale)."""
        return jnp.mean(jnp.abs(x), axis=axes, keepdims=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TernaryFormat(_LevelFormat):
    """``{-a, 0, +a}`` with ``0`` where ``|x| <= threshold * mean|x|`` (TWN, Li et al. 2016).

    The scale ``a`` is the mean of ``|x|`` over the elements above the threshold
    (the TWN closed form); the threshold is recomputed from the tensor itself in
    every call, as in the paper.

    Example:
        >>> TernaryFormat(threshold=0.7).bits
        2
    """

    threshold: float = 0.7  # delta = threshold * mean|x|; in (0, 10]

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold <= 10.0:
            raise ValueError(
                f"TernaryFormat.threshold={self.threshold!r} is not allowed: it must be in (0, 10]"
            )

    @property
    def bits(self) -> int:
        """Storage bits per element (three levels need two bits)."""
        return 2

    @property
    def name(self) -> str:
        """``ternary``."""
        return "ternary"

    def levels(self, x, axes):
        """``sign(x) * (|x| > threshold * mean|x|)`` in {-1, 0, 1}, the mean over ``axes``."""
        delta = self.threshold * jnp.mean(jnp.abs(x), axis=axes, keepdims=True)
        return (jnp.sign(x) * (jnp.abs(x) > delta)).astype(jnp.int8)

    def own_scale(self, x, axes):
        """``mean(|x| : |x| > delta)`` over each group (TWN's closed form)."""
        a = jnp.abs(x)
        above = a > self.threshold * jnp.mean(a, axis=axes, keepdims=True)
        total = jnp.sum(a * above, axis=axes, keepdims=True)
        return total / jnp.maximum(jnp.sum(above, axis=axes, keepdims=True), 1)
