"""OCP Microscaling (MX) block formats: blocks of 32 elements share one E8M0 scale.

OCP Microscaling Formats (MX) Specification v1.0 (Rouhani et al., 2023): MXFP8
(E4M3, E5M2), MXFP6 (E3M2, E2M3), MXFP4 (E2M1) and MXINT8.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from archjax.quant._format import (
    Format,
    PerBlock,
    QParams,
    check_block_granularity,
    check_int,
    over_pow2,
    times_pow2,
)
from archjax.quant.floats import FloatFormat

__all__ = [
    "MXFP4",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "MXINT8",
    "MXFormat",
]

Array = jax.Array

# The element types of the spec's concrete formats. FP elements round to
# nearest even and saturate to +-max normal; E5M2 keeps IEEE inf/NaN codes, E4M3 has
# one NaN code per sign, the FP6/FP4 types have neither.
_FP_ELEMENTS = {
    "e4m3": FloatFormat(4, 3, finite_only=True),
    "e5m2": FloatFormat(5, 2),
    "e3m2": FloatFormat(3, 2, finite_only=True, has_nan=False),
    "e2m3": FloatFormat(2, 3, finite_only=True, has_nan=False),
    "e2m1": FloatFormat(2, 1, finite_only=True, has_nan=False),
}
ELEMENTS = (*_FP_ELEMENTS, "int8")
# MXINT8 elements: two's complement with an implicit scale of 2**-6 (1.6 fixed point).
# Quantization uses the symmetric range +-127 (-128, i.e. -2.0, decodes but is never
# produced), as the reference implementation microsoft/microxcaling does.
_INT8_FRACTION_BITS = 6
_INT8_MAX = 127
_E8M0_BIAS = 127  # E8M0 stores exponents -127..127; 0xFF is NaN
_E8M0_NAN = 0xFF


def _scale_exponent(scale: Array) -> Array:
    """``floor(log2(scale))`` from the float32 bits: exact also for the subnormal 2**-127."""
    bits = jax.lax.bitcast_convert_type(scale.astype(jnp.float32), jnp.int32)
    field = (bits >> 23) & 0xFF
    return jnp.where(field == 0, -_E8M0_BIAS, field - 127)  # subnormals: E8M0's lowest


def _pow2_scale(exponent: Array) -> Array:
    """float32 ``2**exponent`` for exponents -127..127, built from bits (no flush to 0)."""
    normal = (exponent.astype(jnp.int32) + 127) << 23
    bits = jnp.where(exponent >= -126, normal, 1 << 22)  # 2**-127 = 0x00400000
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


@dataclasses.dataclass(frozen=True)
class MXFormat(Format):
    """An OCP MX block format: ``block_size`` elements share one E8M0 scale ``2**e``.

    Calibration follows the spec's conversion of a vector to an MX block: per block,
    ``e = floor(log2(amax)) - emax_elem`` (``emax_elem``: exponent of the element
    type's largest normal; 0 for INT8), clamped to E8M0's -127..127; an all-zero
    block gets ``e = -127``. Elements are ``x / 2**e`` rounded to the element type
    to nearest even and saturated to +-max. A block holding NaN or +-inf gets the
    NaN scale (E8M0 0xFF: the shared exponent overflows, as in microsoft/microxcaling),
    and then every element of the block is NaN.
    Other calibration methods (percentile, MSE) choose ``amax`` and keep the rule.

    ``QParams.scale`` holds ``2**e`` as float32; a scale that is not a power of two
    (e.g. averaged by running statistics) is used as the power of two below it,
    since E8M0 stores exponents only. :meth:`encode` returns the element codes and
    :meth:`encode_scale` the E8M0 byte. Emulation is float32, whose subnormals XLA
    flushes to zero: inputs below ``2**-126`` count as 0 and values decoded below it
    are 0 (the codes and the scale byte stay exact).

    Example:
        >>> fmt = MXFormat("e2m1")                  # MXFP4, also MXFP4 in this module
        >>> gran = fmt.weight_granularity           # PerBlock(32, axis=-2)
        >>> w_hat = fake_quant(w, fmt, calibrate_tensor(w, fmt, granularity=gran), granularity=gran)
    """

    element: str  # element type: "e4m3", "e5m2" (MXFP8), "e3m2", "e2m3" (MXFP6), "e2m1", "int8"
    _: dataclasses.KW_ONLY
    block_size: int = 32  # elements per shared scale; the spec's concrete formats use 32

    def __post_init__(self):
        if self.element not in ELEMENTS:
            raise ValueError(
                f"MXFormat.element={self.element!r} is not allowed: choose one of {ELEMENTS}"
            )
        check_int("MXFormat.block_size", self.block_size, 1, 2**31 - 1)

    @property
    def element_format(self) -> FloatFormat | None:
        """The FP element type (None for INT8)."""
        return _FP_ELEMENTS.get(self.element)

    @property
    def emax_elem(self) -> int:
        """Exponent of the element type's largest normal value (0 for INT8)."""
        elem = self.element_format
        return 0 if elem is None else elem.max_exponent

    @property
    def max_element(self) -> float:
        """Largest element value (before the shared scale)."""
        elem = self.element_format
        return _INT8_MAX / 2**_INT8_FRACTION_BITS if elem is None else elem.max_value

    @property
    def bits(self) -> int:
        """Bits per element (the shared scale adds ``8 / block_size``)."""
        return 8 if self.element_format is None else self.element_format.bits

    @property
    def name(self) -> str:
        """E.g. ``mxfp8_e4m3``, ``mxfp4_e2m1``, ``mxint8`` (``_k16`` if 16 share a scale)."""
        base = "mxint8" if self.element == "int8" else f"mxfp{self.bits}_{self.element}"
        return base + ("" if self.block_size == 32 else f"_k{self.block_size}")

    @property
    def code_dtype(self):
        """int8 for MXINT8, uint8 bit patterns for the FP elements."""
        return jnp.int8 if self.element_format is None else jnp.uint8

    @property
    def code_offset(self) -> int:
        """128 for MXINT8 (two's complement), 0 for FP bit patterns."""
        return 128 if self.element_format is None else 0

    @property
    def weight_granularity(self) -> PerBlock:
        """Blocks along a kernel's input (reduction) axis, ``-2``, as the spec's dot products."""
        return PerBlock(self.block_size, axis=-2)

    def check_granularity(self, granularity) -> None:
        """Only ``PerBlock(block_size, axis)``."""
        check_block_granularity(self, granularity, self.block_size)

    def magnitude(self, x):
        """``|x|`` with NaN as inf: XLA's vectorized max may drop a NaN, never an inf."""
        return jnp.where(jnp.isnan(x), jnp.inf, jnp.abs(x))

    def qparams(self, lo, hi) -> QParams:
        """``2**clamp(floor(log2(amax)) - emax_elem, -127, 127)``; NaN if amax is inf/NaN."""
        amax = jnp.maximum(-lo, hi)
        _, e = jnp.frexp(amax)  # amax = f * 2**e, f in [0.5, 1)
        shared = jnp.where(amax > 0, e - 1 - self.emax_elem, -_E8M0_BIAS)
        scale = _pow2_scale(jnp.clip(shared, -_E8M0_BIAS, _E8M0_BIAS))
        return QParams(scale=jnp.where(jnp.isfinite(amax), scale, jnp.nan), zero_point=None)

    def _round_elements(self, u: Array) -> Array:
        elem = self.element_format
        if elem is not None:
            return elem.round_values(u)
        step = 2.0**_INT8_FRACTION_BITS
        k = jnp.clip(jnp.round(u * step), -_INT8_MAX, _INT8_MAX)
        return jnp.where(k == 0, 0.0, k / step)  # two's complement has no -0

    def round(self, x, scale, zero_point, axes):
        """``element(x / 2**e) * 2**e``; the whole block is NaN if its scale is."""
        e = _scale_exponent(scale)
        y = times_pow2(self._round_elements(over_pow2(x, e)), e)
        return jnp.where(jnp.isnan(scale), jnp.nan, y)

    def encode(self, x, scale, zero_point, axes):
        """Element codes of ``x / 2**e``; a NaN block's elements are 0 (its scale is NaN)."""
        e = _scale_exponent(scale)
        u = over_pow2(x, e)
        elem = self.element_format
        if elem is not None:
            codes = elem.encode_values(elem.round_values(u)).astype(jnp.int32)
        else:
            step = 2.0**_INT8_FRACTION_BITS
            codes = jnp.clip(jnp.round(u * step), -_INT8_MAX, _INT8_MAX)
            codes = jnp.where(jnp.isnan(u), 0, codes).astype(jnp.int32)
        return jnp.where(jnp.isnan(scale), 0, codes).astype(self.code_dtype)

    def decode(self, codes, scale, zero_point):
        """``element(codes) * 2**e``; NaN where the scale is NaN."""
        e = _scale_exponent(scale)
        elem = self.element_format
        if elem is not None:
            values = elem.decode_values(codes)
        else:
            values = codes.astype(jnp.float32) / 2.0**_INT8_FRACTION_BITS
        return jnp.where(jnp.isnan(scale), jnp.nan, times_pow2(values, e))

    def range(self, scale, zero_point):
        """``+-max_element * 2**e``."""
        hi = times_pow2(jnp.float32(self.max_element), _scale_exponent(scale))
        return -hi, hi

    def spacing(self, x, scale, zero_point):
        """The element grid's step at ``x / 2**e``, times ``2**e``."""
        e = _scale_exponent(scale)
        elem = self.element_format
        if elem is None:
            return times_pow2(jnp.ones_like(x), e - _INT8_FRACTION_BITS)
        return times_pow2(elem.quantum(jnp.abs(over_pow2(x, e))), e)

    def encode_scale(self, scale: Array) -> Array:
        """E8M0 bytes (uint8) of scales ``2**e``: ``e + 127``, and 0xFF for NaN."""
        byte = _scale_exponent(jnp.asarray(scale)) + _E8M0_BIAS
        return jnp.where(jnp.isnan(scale), _E8M0_NAN, byte).astype(jnp.uint8)

    def decode_scale(self, byte: Array) -> Array:
        """float32 scales of E8M0 bytes: ``2**(byte - 127)``, NaN for 0xFF."""
        byte = jnp.asarray(byte).astype(jnp.int32)
        return jnp.where(byte == _E8M0_NAN, jnp.nan, _pow2_scale(byte - _E8M0_BIAS))


MXFP8_E4M3 = MXFormat("e4m3")
MXFP8_E5M2 = MXFormat("e5m2")
MXFP6_E3M2 = MXFormat("e3m2")
MXFP6_E2M3 = MXFormat("e2m3")
MXFP4 = MXFormat("e2m1")
MXINT8 = MXFormat("int8")
