"""NF4: QLoRA's 4-bit NormalFloat with per-block absmax scales (Dettmers et al., 2023)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from archjax.quant._format import (
    Format,
    PerBlock,
    QParams,
    absmax_qparams,
    check_block_granularity,
    check_int,
)

__all__ = ["NF4_LEVELS", "NF4Format"]

Array = jax.Array

# The 16 values bitsandbytes uses (``get_4bit_type("nf4")``, float32): quantiles of
# N(0, 1) normalized to [-1, 1], built asymmetrically (8 positive quantiles, 7
# negative ones and an exact 0) so that zero is representable (QLoRA).
NF4_LEVELS = np.array(
    [
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
    ],
    np.float32,
)
_ZERO_CODE = 7
# Midpoints between neighbouring levels, exact (float64), split into a float32 part
# and the float32 remainder so that ``u > midpoint`` is decided exactly in float32.
_MID = (NF4_LEVELS[:-1].astype(np.float64) + NF4_LEVELS[1:]) / 2
_MID_HI = _MID.astype(np.float32)
_MID_LO_NEGATIVE = (_MID - _MID_HI) < 0  # the exact midpoint lies below its float32 part
# Gap to the next level above / below each level (the ends reuse the inner gap).
_GAP = np.diff(NF4_LEVELS)
_GAP_UP = np.append(_GAP, _GAP[-1])
_GAP_DOWN = np.insert(_GAP, 0, _GAP[0])


@dataclasses.dataclass(frozen=True, kw_only=True)
class NF4Format(Format):
    """4-bit NormalFloat: 16 quantiles of N(0, 1) times a per-block absmax (QLoRA).

    Each block of ``block_size`` consecutive elements is divided by its absmax and
    rounded to the nearest of :data:`NF4_LEVELS` (ties go to the lower level, as
    bitsandbytes' ``x > midpoint`` decision tree does); the code is the level's
    index 0..15 (7 is zero). bitsandbytes multiplies by ``1 / absmax`` instead of
    dividing, which can differ by one float32 ulp of ``x / absmax``; we follow the
    paper's division. NaN stays NaN in ``fake_quant`` and is stored as the code of 0;
    +-inf saturate to +-scale. Needs ``granularity=PerBlock(block_size, axis)``
    (QLoRA: 64 consecutive weights along the input axis, ``axis=-2`` of a kernel).

    Example:
        >>> fmt = NF4Format()                      # block_size=64
        >>> gran = fmt.weight_granularity          # PerBlock(64, axis=-2)
        >>> w_hat = fake_quant(w, fmt, calibrate_tensor(w, fmt, granularity=gran), granularity=gran)
    """

    block_size: int = 64  # elements per absmax scale (bitsandbytes' default blocksize)

    def __post_init__(self):
        check_int("NF4Format.block_size", self.block_size, 1, 2**31 - 1)

    @property
    def bits(self) -> int:
        """4 bits per element (plus one float32 absmax per block)."""
        return 4

    @property
    def name(self) -> str:
        """``nf4``."""
        return "nf4"

    @property
    def weight_granularity(self) -> PerBlock:
        """Blocks along a kernel's input axis (``-2``), as QLoRA's flattened ``[out, in]``."""
        return PerBlock(self.block_size, axis=-2)

    def check_granularity(self, granularity) -> None:
        """Only ``PerBlock(block_size, axis)``."""
        check_block_granularity(self, granularity, self.block_size)

    def qparams(self, lo, hi) -> QParams:
        """``scale = absmax`` (the largest level is 1)."""
        return absmax_qparams(lo, hi, 1.0)

    def _codes(self, u: Array) -> Array:
        """Index of the nearest level of ``u`` (int32): the number of midpoints below it."""
        u = u[..., None]
        above = (u > _MID_HI) | ((u == _MID_HI) & _MID_LO_NEGATIVE)
        return jnp.sum(above, axis=-1, dtype=jnp.int32)

    def round(self, x, scale, zero_point, axes):
        """``level(x / scale) * scale``; NaN stays NaN."""
        u = x / scale
        y = jnp.asarray(NF4_LEVELS)[self._codes(u)] * scale
        return jnp.where(jnp.isnan(u), u, y)

    def encode(self, x, scale, zero_point, axes):
        """Level indices 0..15 (uint8); NaN gets the code of 0."""
        u = x / scale
        return jnp.where(jnp.isnan(u), _ZERO_CODE, self._codes(u)).astype(jnp.uint8)

    def decode(self, codes, scale, zero_point):
        """``NF4_LEVELS[codes] * scale``."""
        return jnp.asarray(NF4_LEVELS)[codes.astype(jnp.int32)] * scale

    def range(self, scale, zero_point):
        """``+-scale``."""
        return -scale, scale

    def spacing(self, x, scale, zero_point):
        """The gap between the nearest level and its neighbour on ``x``'s side."""
        u = x / scale
        code = self._codes(u)
        below = u < jnp.asarray(NF4_LEVELS)[code]
        gap = jnp.where(below, jnp.asarray(_GAP_DOWN)[code], jnp.asarray(_GAP_UP)[code])
        return gap * scale
