"""Floating-point formats of any exponent/mantissa width, bias and inf/NaN policy."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from archjax.quant._format import (
    Format,
    QParams,
    absmax_qparams,
    check_bool,
    check_int,
    over_pow2,
    pow2,
    times_pow2,
)

__all__ = ["FloatFormat"]

Array = jax.Array

_MAX_FLOAT_BITS = 16  # codes are stored in uint8/uint16
_FLOAT32_MIN_EXP = -149  # smallest float32 subnormal is 2**-149
_FLOAT32_MAX_EXP = 127


@dataclasses.dataclass(frozen=True)
class FloatFormat(Format):
    """Floating point with any exponent/mantissa width and bias (Kuzmin et al., 2022).

    Values are ``(-1)**s * 2**(e - bias) * 1.m`` (normal) or ``2**(1 - bias) * 0.m``
    (subnormal, exponent field 0). Rounding is to nearest, ties to even, with
    gradual underflow (subnormals) and signed zeros, exactly like an IEEE cast.

    Special values (the inf/NaN policy):

    * ``finite_only=False`` (IEEE-like, e.g. e5m2, e3m4): the all-ones exponent field
      is reserved, mantissa 0 = +-inf and mantissa != 0 = NaN. Needs
      ``mantissa_bits >= 1`` and ``has_nan=True``.
    * ``finite_only=True, has_nan=True`` ("fn", e.g. e4m3fn): no inf; only the
      all-ones code (exponent and mantissa) is NaN, every other code is finite.
    * ``finite_only=True, has_nan=False`` (MX e2m3fn, e2m1fn): every code is finite.

    Out-of-range values (after rounding with an unbounded exponent, so values that
    round down to ``max`` are not out of range) and +-inf inputs:

    * ``saturate=True`` (default, what QAT wants): clamp to ``+-max``; +-inf -> +-max.
    * ``saturate=False``: +-inf if the format has inf, else NaN (what an IEEE cast
      and ``ml_dtypes`` do); not allowed for formats with neither inf nor NaN.

    NaN inputs stay NaN in :func:`archjax.quant.fake_quant` for every format, so a
    diverging run is never hidden. Formats without a NaN code cannot store it:
    :func:`archjax.quant.quantize_codes` writes the code of +0 there (``ml_dtypes`` writes
    a signed zero too), so ``dequantize(quantize_codes(x)) == fake_quant(x)`` holds for all
    inputs except NaN in such formats.

    Emulation runs in float32, whose subnormals XLA flushes to zero on CPU and GPU:
    values below ``2**-126`` become 0, which only matters for 8 exponent bits (the
    subnormals of ``FloatFormat(8, 7)``, i.e. bfloat16, are flushed).

    Compared with ``ml_dtypes`` casts (tested bit for bit): in range they agree for
    e4m3fn, e5m2, e3m4, e2m3fn and e2m1fn. Out of range, ``ml_dtypes`` does not
    saturate e4m3fn/e5m2/e3m4 (it gives NaN/inf, i.e. our ``saturate=False``); it
    saturates e2m3fn/e2m1fn like ours but turns NaN into a signed zero.

    Example:
        >>> FloatFormat(exponent_bits=4, mantissa_bits=3, finite_only=True).max_value
        448.0
    """

    exponent_bits: int  # 1..8 (2..8 for IEEE-like formats, which reserve the top field)
    mantissa_bits: int  # 0..(15 - exponent_bits); 1 + e + m <= 16 bits in storage
    _: dataclasses.KW_ONLY
    bias: int | None = None  # exponent bias; None means the IEEE default 2**(e-1) - 1
    finite_only: bool = False  # True: no inf codes ("fn" formats)
    saturate: bool = True  # True: out-of-range -> +-max; False: -> inf, else NaN
    has_nan: bool = True  # False: no NaN code either (MX fp6/fp4); needs finite_only=True

    def __post_init__(self):
        for field in ("finite_only", "saturate", "has_nan"):
            check_bool(f"FloatFormat.{field}", getattr(self, field))
        min_e = 1 if self.finite_only else 2
        check_int("FloatFormat.exponent_bits", self.exponent_bits, min_e, 8)
        max_m = _MAX_FLOAT_BITS - 1 - self.exponent_bits
        check_int("FloatFormat.mantissa_bits", self.mantissa_bits, 0, max_m)
        if self.bias is not None:
            check_int("FloatFormat.bias", self.bias, -1000, 1000)
        if not self.finite_only and not self.has_nan:
            raise ValueError("FloatFormat.has_nan=False is only allowed with finite_only=True")
        if not self.finite_only and self.mantissa_bits < 1:
            raise ValueError(
                "FloatFormat.mantissa_bits=0 needs finite_only=True (IEEE NaN needs a mantissa bit)"
            )
        if self.finite_only and not self.has_nan and not self.saturate:
            raise ValueError(
                "FloatFormat.saturate=False is not allowed for a format with neither inf nor NaN "
                "(finite_only=True, has_nan=False): out-of-range values have nowhere to go"
            )
        lowest = self.min_exponent - self.mantissa_bits
        if lowest < _FLOAT32_MIN_EXP or self.max_exponent > _FLOAT32_MAX_EXP:
            raise ValueError(
                f"FloatFormat.bias={self.exponent_bias} puts the format outside float32 "
                f"(exponents {lowest}..{self.max_exponent}); "
                f"allowed: the smallest subnormal >= 2**{_FLOAT32_MIN_EXP} and max < 2**128"
            )

    @property
    def bits(self) -> int:
        """Storage bits per element: sign + exponent + mantissa."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def exponent_bias(self) -> int:
        """The bias actually used (``bias`` or the IEEE default)."""
        return 2 ** (self.exponent_bits - 1) - 1 if self.bias is None else self.bias

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal value (and scale of the subnormals)."""
        return 1 - self.exponent_bias

    @property
    def max_exponent(self) -> int:
        """Unbiased exponent of the largest finite value."""
        top = 2**self.exponent_bits - 1
        if not self.finite_only or (self.has_nan and self.mantissa_bits == 0):
            top -= 1  # top field reserved (IEEE), or holds only the NaN code
        return top - self.exponent_bias

    @property
    def max_value(self) -> float:
        """Largest finite value."""
        m = self.mantissa_bits
        top_mantissa = 2**m - 1
        if self.finite_only and self.has_nan and m > 0:
            top_mantissa -= 1  # the all-ones code is NaN
        return float(math.ldexp(1.0 + top_mantissa / 2**m, self.max_exponent))

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value."""
        return float(math.ldexp(1.0, self.min_exponent - self.mantissa_bits))

    @property
    def has_inf(self) -> bool:
        """Whether the format has +-inf codes."""
        return not self.finite_only

    @property
    def name(self) -> str:
        """Short name, e.g. ``fp8_e4m3fn``, ``fp8_e5m2``, ``fp6_e2m3fn``."""
        suffix = "fn" if self.finite_only else ""
        if self.bias is not None and self.bias != 2 ** (self.exponent_bits - 1) - 1:
            suffix += f"_b{self.bias}"
        return f"fp{self.bits}_e{self.exponent_bits}m{self.mantissa_bits}{suffix}"

    # --- numerics on unscaled values (shared with the MX block formats) ---

    def quantum(self, a: Array) -> Array:
        """Spacing of the grid at magnitude ``a``, at least float32's smallest normal."""
        return pow2(jnp.maximum(_quantum_exponent(a, self), -126))

    def round_values(self, u: Array) -> Array:
        """Rounds ``u`` (already divided by the scale): RNE, subnormals, specials."""
        a = jnp.abs(u)
        q_exp = _quantum_exponent(jnp.where(jnp.isfinite(a), a, 0.0), self)
        # Exact: scaling by powers of two only moves the binary point.
        r = times_pow2(jnp.round(over_pow2(a, q_exp)), q_exp)
        big = jnp.float32(self.max_value)
        over = (r > big) | jnp.isinf(a)
        if self.saturate:
            over_value = big
        elif self.has_inf:
            over_value = jnp.float32(jnp.inf)
        else:
            over_value = jnp.float32(jnp.nan)
        r = jnp.where(over, over_value, r)
        r = jnp.where(jnp.isnan(a), a, r)
        return jnp.copysign(r, u)

    def encode_values(self, y: Array) -> Array:
        """Bit codes (sign | exponent field | mantissa) of values already on the grid."""
        e_bits, m_bits = self.exponent_bits, self.mantissa_bits
        top_field = 2**e_bits - 1
        a = jnp.abs(y)
        finite_a = jnp.where(jnp.isfinite(a), a, 0.0)
        _, e = jnp.frexp(finite_a)
        normal = finite_a >= 2.0**self.min_exponent
        exponent = jnp.where(normal, e - 1, self.min_exponent)
        field = jnp.where(normal, exponent + self.exponent_bias, 0)
        mant = over_pow2(finite_a, exponent - m_bits) - jnp.where(normal, 2.0**m_bits, 0.0)
        mant = mant.astype(jnp.int32)
        if self.has_inf:
            field = jnp.where(jnp.isinf(a), top_field, field)
            mant = jnp.where(jnp.isinf(a), 0, mant)
        nan = jnp.isnan(a)
        if self.has_nan:
            nan_mant = 2 ** (m_bits - 1) if self.has_inf else 2**m_bits - 1  # IEEE quiet / fn NaN
            field = jnp.where(nan, top_field, field)
            mant = jnp.where(nan, nan_mant, mant)
            sign = jnp.signbit(y).astype(jnp.int32)
        else:  # no NaN code: documented as +0
            field, mant = jnp.where(nan, 0, field), jnp.where(nan, 0, mant)
            sign = jnp.where(nan, 0, jnp.signbit(y).astype(jnp.int32))
        code = (sign << (e_bits + m_bits)) | (field << m_bits) | mant
        return code.astype(self.code_dtype)

    def decode_values(self, code: Array) -> Array:
        """Values (float32, unscaled) of bit codes."""
        e_bits, m_bits = self.exponent_bits, self.mantissa_bits
        code = code.astype(jnp.int32)
        sign = (code >> (e_bits + m_bits)) & 1
        field = (code >> m_bits) & (2**e_bits - 1)
        mant = code & (2**m_bits - 1)
        normal = field > 0
        exponent = jnp.where(normal, field - self.exponent_bias, self.min_exponent)
        significand = mant.astype(jnp.float32) + jnp.where(normal, 2.0**m_bits, 0.0)
        value = times_pow2(significand, exponent - m_bits)
        top = field == 2**e_bits - 1
        if self.has_inf:
            value = jnp.where(top & (mant == 0), jnp.inf, value)
            value = jnp.where(top & (mant != 0), jnp.nan, value)
        elif self.has_nan:
            value = jnp.where(top & (mant == 2**m_bits - 1), jnp.nan, value)
        return jnp.where(sign == 1, -value, value)

    # --- the Format interface ---

    def qparams(self, lo: Array, hi: Array) -> QParams:
        """``scale = absmax / max_value``."""
        return absmax_qparams(lo, hi, self.max_value)

    def round(self, x, scale, zero_point, axes):
        """``round_values(x / scale) * scale``."""
        return self.round_values(x / scale) * scale

    def encode(self, x, scale, zero_point, axes):
        """Bit codes of ``x / scale`` rounded to the format."""
        return self.encode_values(self.round_values(x / scale))

    def decode(self, codes, scale, zero_point):
        """``decode_values(codes) * scale``."""
        return self.decode_values(codes) * scale

    def range(self, scale, zero_point):
        """``+-max_value * scale``."""
        return -self.max_value * scale, self.max_value * scale

    def spacing(self, x, scale, zero_point):
        """The grid step at ``|x|``: it doubles with every binade."""
        return self.quantum(jnp.abs(x / scale)) * scale


def _quantum_exponent(a: Array, fmt: FloatFormat) -> Array:
    """log2 of the format's grid spacing at magnitude ``a`` (unbounded exponent above)."""
    _, e = jnp.frexp(a)  # a = f * 2**e, f in [0.5, 1): floor(log2 a) = e - 1
    return jnp.maximum(e - 1, fmt.min_exponent) - fmt.mantissa_bits
