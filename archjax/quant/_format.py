"""What every number format shares: the ``Format`` base class, the granularities,
argument checks and exact float32 powers of two.

A format owns its numerics: calibration, fake quantization, codes and export call
only the methods of :class:`Format`, so adding a format is one subclass (see
``docs/design.md``, "Formats").
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

_TINY = float(jnp.finfo(jnp.float32).tiny)  # keeps scale > 0 for all-zero groups


def check_int(name: str, value: object, low: int, high: int) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is an int in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an int in [{low}, {high}]")


def check_bool(name: str, value: object) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed: it must be True or False")


@flax.struct.dataclass
class QParams:
    """Scale (> 0) and optional integer zero point of a quantized tensor.

    Shapes follow the granularity: ``()`` per tensor; the tensor's shape with every
    axis but the channel axis set to 1 per channel; the tensor's shape with the
    blocked axis divided by ``block_size`` per block. ``zero_point`` is ``None``
    for symmetric formats and an int32 array of the scale's shape otherwise.
    """

    scale: Array
    zero_point: Array | None = None


class Format:
    """Abstract base of the number formats: frozen dataclasses that own their numerics.

    A format says *which values* a quantized tensor may take and how they are
    rounded, stored and calibrated. Every method works on float32 arrays in the
    grouped layout of :mod:`archjax.quant._groups`: ``x`` has a block axis for a
    ``PerBlock`` granularity, ``scale`` and ``zero_point`` broadcast against it and
    ``axes`` are the axes that one scale covers. Subclasses implement ``bits``,
    ``name``, ``qparams``, ``round``, ``encode``, ``decode`` and ``range`` and
    override the rest where the defaults do not hold.
    """

    # ``bits`` (storage bits per element) is a field or a property of each subclass.

    @property
    def name(self) -> str:
        """Short name, e.g. ``int4`` or ``fp8_e4m3fn``."""
        raise NotImplementedError

    @property
    def code_dtype(self):
        """The dtype of :meth:`encode`'s codes."""
        return jnp.uint8 if self.bits <= 8 else jnp.uint16

    @property
    def code_offset(self) -> int | None:
        """What to add to a code so that it lies in ``[0, 2**bits)`` (bit packing).

        ``None`` when the codes are levels rather than bit patterns (binary, ternary).
        """
        return 0

    @property
    def symmetric_range(self) -> bool:
        """Whether calibration maps ``+-absmax`` (True) or ``[min, max]`` onto the format."""
        return True

    @property
    def weight_granularity(self):
        """The granularity used when a caller quantizes a kernel without choosing one."""
        return PerChannel(-1)

    def check_granularity(self, granularity) -> None:
        """Raises a ValueError if the format cannot use ``granularity``."""

    def check_zero_point(self, zero_point) -> None:
        """Raises a ValueError if the format cannot use a (non-None) ``zero_point``."""

    def magnitude(self, x: Array) -> Array:
        """What calibration's absmax takes the maximum of: ``|x|``."""
        return jnp.abs(x)

    def own_scale(self, x: Array, axes: tuple[int, ...]) -> Array | None:
        """A scale the format computes from the tensor itself, whatever the method, or None."""
        return None

    def qparams(self, lo: Array, hi: Array) -> QParams:
        """``QParams`` that map the range ``[lo, hi]`` (``lo <= 0 <= hi``) onto the format."""
        raise NotImplementedError(f"{self.name} computes its own scale (see own_scale)")

    def round(self, x: Array, scale: Array, zero_point: Array | None, axes) -> Array:
        """Fake-quantized ``x``: values on the grid times the scale (float32)."""
        raise NotImplementedError

    def encode(self, x: Array, scale: Array, zero_point: Array | None, axes) -> Array:
        """Stored codes of ``x`` (``code_dtype``)."""
        raise NotImplementedError

    def decode(self, codes: Array, scale: Array, zero_point: Array | None) -> Array:
        """Values (float32) of stored codes; ``decode(encode(x)) == round(x)``."""
        raise NotImplementedError

    def range(self, scale: Array, zero_point: Array | None) -> tuple[Array, Array]:
        """Smallest and largest representable values (the clipped STE's pass band)."""
        raise NotImplementedError

    def spacing(self, x: Array, scale: Array, zero_point: Array | None) -> Array | None:
        """Grid step at ``x`` (ReSTE within a step), or None for two/three-level formats."""
        raise NotImplementedError


def absmax_qparams(lo: Array, hi: Array, max_value: float) -> QParams:
    """``scale = absmax / max_value`` (> 0): the calibration of symmetric formats."""
    absmax = jnp.maximum(-lo, hi)
    return QParams(scale=jnp.maximum(absmax / max_value, _TINY), zero_point=None)


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
        check_int("PerBlock.block_size", self.block_size, 1, 2**31 - 1)
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"PerBlock.axis={self.axis!r} is not allowed: it must be an int")


Granularity = PerTensor | PerChannel | PerBlock
PER_TENSOR = PerTensor()  # the default granularity, shared so it is not built per call


def check_block_granularity(fmt: Format, granularity, block_size: int) -> None:
    """Raises unless ``granularity`` is ``PerBlock(block_size, axis)`` (block formats)."""
    if not isinstance(granularity, PerBlock) or granularity.block_size != block_size:
        raise ValueError(
            f"{fmt.name} shares one scale per {block_size} elements: granularity={granularity!r} "
            f"is not allowed; use PerBlock(block_size={block_size}, axis=...)"
        )


# XLA flushes float32 subnormals to zero on CPU and GPU, so powers of two below
# 2**-126 are never materialized: small operands are first shifted up by 2**_SHIFT.
_SHIFT = 64


def pow2(exponent: Array) -> Array:
    """``2.0 ** exponent`` for an int32 exponent in the float32 normal range."""
    return jnp.ldexp(jnp.ones(jnp.shape(exponent), jnp.float32), exponent)


def times_pow2(a: Array, exponent: Array) -> Array:
    """``a * 2**exponent`` without forming a subnormal power of two."""
    shift = jnp.where(exponent < -100, _SHIFT, 0)
    return a * pow2(exponent + shift) * pow2(-shift)


def over_pow2(a: Array, exponent: Array) -> Array:
    """``a / 2**exponent`` without forming a subnormal power of two.

    Large exponents are shifted too: XLA may turn the division into a multiplication
    by ``2**-exponent``, which is subnormal (flushed) for exponents above 126.
    """
    shift = jnp.where(exponent < -100, _SHIFT, jnp.where(exponent > 100, -_SHIFT, 0))
    return (a * pow2(shift)) / pow2(exponent + shift)
