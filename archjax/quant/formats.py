"""Number formats and granularities for quantization, as frozen keyword-only dataclasses.

A format says *which values* a quantized tensor may take (before scaling); a
granularity says *which elements share* a scale. Both are plain data, checked at
construction, so an impossible choice fails at once with a message that names the
field and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "BinaryFormat",
    "FloatFormat",
    "Format",
    "Granularity",
    "PER_TENSOR",
    "IntFormat",
    "PerBlock",
    "PerChannel",
    "PerTensor",
]

_MAX_INT_BITS = 16  # codes are stored in int8/int16 (or the unsigned types)
_MAX_FLOAT_BITS = 16  # codes are stored in uint8/uint16
_FLOAT32_MIN_EXP = -149  # smallest float32 subnormal is 2**-149
_FLOAT32_MAX_EXP = 127


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an int in [{low}, {high}]")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed: it must be True or False")


@dataclasses.dataclass(frozen=True)
class IntFormat:
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
        _check_int("IntFormat.bits", self.bits, 1, _MAX_INT_BITS)
        for field in ("signed", "symmetric", "narrow_range"):
            _check_bool(f"IntFormat.{field}", getattr(self, field))
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


@dataclasses.dataclass(frozen=True)
class FloatFormat:
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
    :func:`archjax.quant.quantize` writes the code of +0 there (``ml_dtypes`` writes
    a signed zero too), so ``dequantize(quantize(x)) == fake_quant(x)`` holds for all
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
            _check_bool(f"FloatFormat.{field}", getattr(self, field))
        min_e = 1 if self.finite_only else 2
        _check_int("FloatFormat.exponent_bits", self.exponent_bits, min_e, 8)
        max_m = _MAX_FLOAT_BITS - 1 - self.exponent_bits
        _check_int("FloatFormat.mantissa_bits", self.mantissa_bits, 0, max_m)
        if self.bias is not None:
            _check_int("FloatFormat.bias", self.bias, -1000, 1000)
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class BinaryFormat:
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class TernaryFormat:
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


Format = IntFormat | FloatFormat | BinaryFormat | TernaryFormat


@dataclasses.dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""


@dataclasses.dataclass(frozen=True)
class PerChannel:
    """One scale per index along ``axis`` (e.g. output channels of a kernel)."""

    axis: int = -1  # the channel axis; negative counts from the end

    def __post_init__(self):
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"PerChannel.axis={self.axis!r} is not allowed: it must be an int")


@dataclasses.dataclass(frozen=True)
class PerBlock:
    """One scale per block of ``block_size`` consecutive elements along ``axis``.

    Every other axis keeps its own scales (sub-channel quantization), so a kernel
    ``[in, out]`` with ``PerBlock(block_size=32, axis=0)`` has scales ``[in // 32, out]``.
    """

    block_size: int  # elements per block along axis, >= 1; must divide that axis
    axis: int = -1  # the blocked axis; negative counts from the end

    def __post_init__(self):
        _check_int("PerBlock.block_size", self.block_size, 1, 2**31 - 1)
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"PerBlock.axis={self.axis!r} is not allowed: it must be an int")


Granularity = PerTensor | PerChannel | PerBlock
PER_TENSOR = PerTensor()  # the default granularity, shared so it is not built per call
