"""Optimizer state stored block-wise quantized (8-bit and 4-bit), as an optax wrapper.

Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (2022): each
moment tensor is split into blocks of ``block_size`` values; a block stores one
float32 ``absmax`` and, per value, the index of the nearest entry of a fixed
code book ("quantization map") applied to ``value / absmax``. The 8-bit map is
the *dynamic* map (a sign bit, a run of zeros that acts as a variable exponent,
then a linear fraction), signed for first moments and unsigned for second
moments; both are built by :func:`dynamic_map` exactly as bitsandbytes'
``create_dynamic_map``. Tensors with fewer than ``min_size`` values stay float32
(as bitsandbytes' ``min_8bit_size``).

The 4-bit variant follows Li et al., "Memory Efficient Optimizers with 4-bit
States" (2023): blocks of 128, a 4-bit dynamic map for first moments and, for
second moments, a *linear map without zero* (``(i + 1) / 16``) because a
second moment rounded to zero turns ``m / sqrt(v)`` into a spike. Two codes are
packed in one byte.

Encoding finds the nearest code without a search (see :func:`_encode`): the float's
sign, exponent and top mantissa bits index a table of 2**16 entries that holds the
number of code-book midpoints below that range and the one midpoint inside it, so one
lookup and an integer add give exactly "count the float32 midpoints below x".
Decoding is a lookup in the code book. The new moment is normalized in its own shape
(the absmax broadcast over it), which is what lets XLA:CPU write it once and fuse the
encoder into its reader; the stored layout (codes and absmax per block of the flat
tensor) and the codes themselves are the same as before that change, bit for bit.

The wrapper is generic: :func:`quantize_state` takes any optax optimizer,
dequantizes its state before ``update`` and re-quantizes the new state after,
so the arithmetic is the inner optimizer's own, in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax


def dynamic_map(*, signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8):
    """The dynamic quantization map of Dettmers (2016; 2022), sorted, ``2**total_bits`` values.

    For ``i`` in ``0..max_exponent_bits-1`` the map holds the midpoints of a linear
    grid on ``[0.1, 1]`` scaled by ``10**(i - max_exponent_bits + 1)`` (and their
    negatives if ``signed``), plus ``0`` and ``1``; bitsandbytes' construction.

    Args:
      signed: include negative values (first moments) or not (second moments).
      max_exponent_bits: number of decades covered (7 for 8 bits, 3 for 4 bits).
      total_bits: code width.

    Returns:
      A sorted float32 numpy array of ``2**total_bits`` values in ``[-1, 1]``.

    Example:
      >>> code = dynamic_map(signed=True)  # 256 values, smallest magnitude 5.5e-7
    """
    non_sign_bits = total_bits - 1
    values: list[float] = []
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        n = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1
        bounds = np.linspace(0.1, 1.0, n)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        scale = 10.0 ** (-(max_exponent_bits - 1) + i)
        values += list(scale * means) + (list(-scale * means) if signed else [])
    if extra > 0:
        bounds = np.linspace(0.1, 1.0, extra + 1)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        scale = 10.0 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)
        values += list(scale * means) + (list(-scale * means) if signed else [])
    values += [0.0, 1.0]
    if len(values) != 2**total_bits:
        raise ValueError(
            f"dynamic_map(signed={signed}, max_exponent_bits={max_exponent_bits}, "
            f"total_bits={total_bits}) gives {len(values)} values, not {2**total_bits}."
        )
    return np.sort(np.asarray(values, np.float32))


def linear_map_no_zero(total_bits: int = 4):
    """``(i + 1) / 2**bits`` for ``i < 2**bits``: Li et al.'s map for 4-bit second moments."""
    n = 2**total_bits
    return (np.arange(1, n + 1, dtype=np.float32) / n).astype(np.float32)


@functools.cache
def _code_book(bits: int, signed: bool) -> np.ndarray:
    if bits == 8:
        return dynamic_map(signed=signed, max_exponent_bits=7, total_bits=8)
    if bits == 4:
        if signed:
            return dynamic_map(signed=True, max_exponent_bits=3, total_bits=4)
        return linear_map_no_zero(4)
    raise ValueError(f"bits must be 8 or 4, got {bits!r}.")


@flax.struct.dataclass
class QuantizedArray:
    """A float tensor stored as block-wise codes: ``value ~= code_book[codes] * absmax``.

    Attributes:
      codes: ``uint8[num_blocks, block_size]`` (8-bit) or ``[num_blocks, block_size // 2]``
        (4-bit, two codes per byte, low nibble first).
      absmax: ``float32[num_blocks]``, the largest magnitude in each block.
      shape: the original shape (static).
      bits: 8 or 4 (static).
      signed: which code book (static): signed for first moments.
    """

    codes: jax.Array
    absmax: jax.Array
    shape: tuple[int, ...] = flax.struct.field(pytree_node=False)
    bits: int = flax.struct.field(pytree_node=False)
    signed: bool = flax.struct.field(pytree_node=False)


def quantize_blockwise(
    x: jax.Array, *, bits: int = 8, signed: bool = True, block_size: int = 2048
) -> QuantizedArray:
    """Quantizes ``x`` block-wise to the nearest code-book entry (round to nearest).

    Args:
      x: any float array.
      bits: 8 (dynamic map) or 4 (dynamic map if ``signed``, else linear without zero).
      signed: signed code book (values of either sign) or unsigned (``x >= 0``).
      block_size: values per block (must be even for 4 bits); a smaller tensor is one block.

    Returns:
      A :class:`QuantizedArray`; :func:`dequantize_blockwise` inverts it up to rounding.

    Example:
      >>> q = quantize_blockwise(jnp.linspace(-1, 1, 4096), bits=8)
      >>> y = dequantize_blockwise(q)  # |y - x| <= half a code-book gap * absmax
    """
    return _quantize_array(x, bits=bits, signed=signed, block_size=block_size, barrier=True)


def _quantize_array(x, *, bits: int, signed: bool, block_size: int, barrier: bool):
    if bits == 4 and block_size % 2:
        raise ValueError(f"block_size must be even for 4-bit states, got {block_size}.")
    # A tensor smaller than one block is one block of its own (even) size: no padding.
    block_size = min(block_size, x.size + x.size % 2)
    codes, absmax = _quantize(x, bits=bits, signed=signed, block_size=block_size, barrier=barrier)
    return QuantizedArray(codes, absmax, shape=tuple(x.shape), bits=bits, signed=signed)


# Encoding by table (see _encode): a float's 32 bits, taken as an unsigned integer whose
# order is the float order ("sortable key"), split into a 16-bit bucket and 16 low bits.
_LOW_BITS = 16
# Added to the key before the split so that +inf is the last key of its bucket and the
# positive NaNs (keys above +inf) start a bucket of their own (see _encoder_table).
_KEY_OFFSET = 2**_LOW_BITS - 1


def _sortable_keys(x: np.ndarray) -> np.ndarray:
    """uint64 keys of float32 ``x`` whose order is the float order (then +offset)."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    keys = np.where(b >> 31 == 1, b ^ 0xFFFFFFFF, b | 0x80000000)
    return (keys + _KEY_OFFSET) % 2**32


@functools.cache
def _encoder_table(bits: int, signed: bool) -> np.ndarray:
    """``int32[2**16]``: per bucket of keys, ``(c << 16) + 0xFFFF - t`` (see :func:`_encode`).

    ``c`` counts the float32 midpoints between neighbouring code-book entries whose key is
    below the bucket, ``t`` is the low 16 bits of the key of the one midpoint inside the
    bucket (0xFFFF if none). A bucket spans 2**-7 of a binade, narrower than any gap
    between the maps' midpoints, which is checked here.
    """
    code = _code_book(bits, signed)
    mid_keys = _sortable_keys((code[1:] + code[:-1]) / 2)  # as the nearest-code rule rounds
    if not np.all(np.diff(mid_keys.astype(np.int64)) > 0):
        raise ValueError(f"the {bits}-bit code book's midpoints are not increasing.")
    first = np.arange(2**_LOW_BITS, dtype=np.uint64) << _LOW_BITS
    below = np.searchsorted(mid_keys, first, side="left")
    inside = np.searchsorted(mid_keys, first + 2**_LOW_BITS - 1, side="right") - below
    if inside.max() > 1:
        raise ValueError(f"a bucket holds {inside.max()} midpoints of the {bits}-bit map.")
    low = np.full(first.shape, 2**_LOW_BITS - 1, np.int64)
    low[inside == 1] = mid_keys[below[inside == 1]] % 2**_LOW_BITS
    table = (below.astype(np.int64) << _LOW_BITS) + (2**_LOW_BITS - 1 - low)
    # The buckets above +inf's hold the positive NaNs (the negative ones sort below -inf,
    # where no midpoint is): NaN -> code 0, as the binary search gave.
    table[(int(_sortable_keys(np.float32(np.inf))) >> _LOW_BITS) + 1 :] = 0
    return table.astype(np.int32)


def _encode(x: jax.Array, bits: int, signed: bool) -> jax.Array:
    """Index of the nearest code-book entry to ``x``, ties to the lower index, NaN -> 0.

    That is the number of float32 midpoints between neighbouring entries below ``x``
    (what the binary search over the midpoints computed), read from a table: the float's
    bits as a key ordered like the floats, its top 16 bits (sign, exponent, 7 mantissa
    bits) index :func:`_encoder_table`, which holds the count below the bucket and the
    one midpoint inside it, so that adding the low 16 bits carries into the count exactly
    when ``x`` lies above that midpoint. About ten integer operations and one lookup per
    value in place of a search, exact for every float32 (tested bucket by bucket).
    """
    b = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    # Negative floats: flip every bit (larger magnitude, smaller key); others: the sign bit.
    key = (b ^ ((b >> 31) | jnp.int32(-(2**31)))) + _KEY_OFFSET
    table = jnp.asarray(_encoder_table(bits, signed))
    entry = table.at[jax.lax.shift_right_logical(key, _LOW_BITS)].get(mode="promise_in_bounds")
    return ((entry + (key & (2**_LOW_BITS - 1))) >> _LOW_BITS).astype(jnp.uint8)


def _decode(codes: jax.Array, bits: int, signed: bool) -> jax.Array:
    """The code-book entries at ``codes`` (uint8): a lookup in the 16- or 256-entry table.

    On XLA:CPU the lookup, fused into the reader of the decoded moment, is faster than
    computing the entry (a division and a chain of selects per value; measured in
    docs/benchmarks.md); the linear 4-bit map is one exact multiply-add.
    """
    code = _code_book(bits, signed)
    if bits == 4 and not signed:
        return (codes.astype(jnp.float32) + 1) * (1 / code.size)  # (i + 1) / 16, exact
    index = codes.astype(jnp.int32)
    return jnp.asarray(code).at[index].get(mode="promise_in_bounds")  # uint8 < code.size


def _block_view(shape: tuple[int, ...], block: int) -> tuple[tuple[int, ...], int] | None:
    """How one scale per block broadcasts over ``shape`` along whole trailing axes.

    Returns ``(scale_shape, repeat)``: either trailing axes whose product divides
    ``block`` (a block is ``repeat`` consecutive sub-tensors, ``scale_shape`` the leading
    axes) or a last axis that is a multiple of ``block`` (``scale_shape`` ends with the
    blocks per row, ``repeat`` is 0); None where blocks straddle rows unevenly.
    """
    size, j = 1, len(shape)
    while j > 0 and block % (size * shape[j - 1]) == 0:
        size *= shape[j - 1]
        j -= 1
    if j < len(shape):
        return tuple(shape[:j]), block // size
    if shape and shape[-1] % block == 0:
        return (*shape[:-1], shape[-1] // block), 0
    return None


def _broadcast_blocks(scale: jax.Array, shape: tuple[int, ...], block: int) -> jax.Array:
    """``scale`` (one value per block) as an array of ``shape``, by a broadcast along
    whole trailing axes where :func:`_block_view` finds one."""
    view = _block_view(shape, block)
    if view is None:
        size = int(np.prod(shape, dtype=np.int64))
        scale = jnp.ravel(jnp.broadcast_to(scale[:, None], (scale.size, block)))
        return scale[:size].reshape(shape)
    scale_shape, repeat = view
    if repeat == 0:
        scale = jnp.broadcast_to(scale.reshape(scale_shape)[..., None], (*scale_shape, block))
        return scale.reshape(shape)
    rows = int(np.prod(scale_shape, dtype=np.int64))
    scale = jnp.ravel(jnp.broadcast_to(scale[:, None], (scale.size, repeat)))[:rows]
    leading = tuple(range(len(scale_shape)))
    return jax.lax.broadcast_in_dim(scale.reshape(scale_shape), shape, leading)


# Jitted so that eager calls (``tx.init`` outside jit) compile once per shape; inside an
# outer jit it is inlined.
@functools.partial(jax.jit, static_argnames=("bits", "signed", "block_size", "barrier"))
def _quantize(x, *, bits: int, signed: bool, block_size: int, barrier: bool = True):
    # Inside a jitted init the moments are constants (zeros); without the barrier XLA
    # constant-folds the whole quantization, which takes minutes for a ResNet-50. The
    # update leaves it out (its moments are never constants): the barrier would write the
    # new moment to memory instead of fusing it into the absmax and the encoder.
    x = x.astype(jnp.float32)
    if barrier:
        x = jax.lax.optimization_barrier(x)
    pad = -x.size % block_size
    blocks = jnp.pad(jnp.ravel(x), (0, pad)).reshape(-1, block_size)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    divisor = jnp.where(absmax > 0, absmax, 1.0)
    # The same divisions as blocks / absmax, in the moment's own shape: XLA:CPU then writes
    # the new moment once and fuses the encoder into its reader; normalizing the
    # [blocks, block_size] view of it instead makes XLA recompute the moment (and write the
    # decoded old one) in every reader (docs/benchmarks.md, "Optimizer state").
    codes = _encode(x / _broadcast_blocks(divisor, x.shape, block_size), bits, signed)
    zero = _encode(jnp.zeros((), jnp.float32), bits, signed)  # the padding's code
    codes = jnp.pad(jnp.ravel(codes), (0, pad), constant_values=zero).reshape(-1, block_size)
    if bits == 4:
        codes = _pack_nibbles(codes)
    return codes, absmax


def _pack_nibbles(codes: jax.Array) -> jax.Array:
    """``codes[:, 0::2] | codes[:, 1::2] << 4`` for 4-bit codes ``uint8[n, 2k]``.

    Each pair of neighbouring bytes is read as one little-endian uint16 (``lo | hi << 8``):
    XLA:CPU vectorizes that, where the two stride-2 slices cost 0.9 against 0.5 ns/value
    for encoding and packing (docs/benchmarks.md).
    """
    pairs = jax.lax.bitcast_convert_type(codes.reshape(codes.shape[0], -1, 2), jnp.uint16)
    return ((pairs & 0xF) | ((pairs >> 8) << 4)).astype(jnp.uint8)


def dequantize_blockwise(q: QuantizedArray) -> jax.Array:
    """The float32 array that ``q`` stands for."""
    codes = q.codes
    if q.bits == 4:
        codes = jnp.stack([codes & 0xF, codes >> 4], axis=-1).reshape(codes.shape[0], -1)
    values = _decode(codes, q.bits, q.signed) * q.absmax[:, None]
    size = int(np.prod(q.shape, dtype=np.int64))
    return values.reshape(-1)[:size].reshape(q.shape)


# One program for all the quantized leaves of a state (inlined when the caller jits the
# whole update, as a train step does; without it an eager update dispatches per leaf).
@jax.jit
def _dequantize_all(qs: list[QuantizedArray]) -> list[jax.Array]:
    return [dequantize_blockwise(q) for q in qs]


@functools.partial(jax.jit, static_argnames=("layouts",))
def _quantize_all(xs: list[jax.Array], *, layouts) -> list[QuantizedArray]:
    return [
        _quantize_array(x, bits=bits, signed=signed, block_size=block, barrier=False)
        for x, (bits, signed, block) in zip(xs, layouts, strict=True)
    ]


def _replaced(leaves: list, where: list[int], values: list) -> list:
    """``leaves`` with ``leaves[where[j]]`` replaced by ``values[j]``."""
    leaves = list(leaves)
    for i, value in zip(where, values, strict=True):
        leaves[i] = value
    return leaves


class QuantizedState(NamedTuple):
    """State of :func:`quantize_state`: the inner state with large moments quantized."""

    inner: Any


def quantize_state(
    inner: optax.GradientTransformation,
    *,
    bits: int = 8,
    block_size: int | None = None,
    min_size: int = 4096,
    unsigned_fields: Sequence[str] = ("nu",),
) -> optax.GradientTransformation:
    """Wraps ``inner`` so that its state is stored block-wise quantized between steps.

    Every floating leaf of the inner state with at least ``min_size`` values is
    held as a :class:`QuantizedArray`; leaves under a field named in
    ``unsigned_fields`` (optax's second moment ``nu``) use the unsigned map. The
    update dequantizes, runs ``inner.update`` in float32, and quantizes the new
    state, so any optax optimizer (adam, sgd momentum, lamb, ...) works unchanged.
    Dettmers et al. (2022) 8-bit; Li et al. (2023) 4-bit.

    Args:
      inner: the optimizer whose state to compress.
      bits: 8 or 4.
      block_size: values per block (default 2048 for 8 bits, 128 for 4 bits, as in the papers).
      min_size: smaller tensors stay float32.
      unsigned_fields: state field names holding non-negative values.

    Returns:
      An ``optax.GradientTransformation`` with the same updates as ``inner`` up to
      the state's rounding.

    Example:
      >>> tx = quantize_state(optax.adam(1e-3), bits=8)  # ~2 bytes/param instead of 8
    """
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}.")
    block = block_size or (2048 if bits == 8 else 128)
    unsigned = frozenset(unsigned_fields)

    def compress(path, x):
        eligible = (
            isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct)
            and jnp.issubdtype(x.dtype, jnp.floating)
            and x.size >= min_size
        )
        if not eligible:
            return x
        # A path such as "0/nu/conv/kernel": unsigned if one of its parts is a named field.
        parts = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
        signed = not (set(parts) & unsigned)
        return quantize_blockwise(x, bits=bits, signed=signed, block_size=block)

    def init_fn(params):
        return QuantizedState(jax.tree_util.tree_map_with_path(compress, inner.init(params)))

    def update_fn(updates, state, params=None, **extra_args):
        leaves, treedef = jax.tree.flatten(
            state.inner, is_leaf=lambda q: isinstance(q, QuantizedArray)
        )
        where = [i for i, q in enumerate(leaves) if isinstance(q, QuantizedArray)]
        floats = _dequantize_all([leaves[i] for i in where])
        inner_state = treedef.unflatten(_replaced(leaves, where, floats))
        updates, new_inner = optax.with_extra_args_support(inner).update(
            updates, inner_state, params, **extra_args
        )
        new_leaves = treedef.flatten_up_to(new_inner)
        layouts = tuple((leaves[i].bits, leaves[i].signed, block) for i in where)
        fresh = _quantize_all([new_leaves[i] for i in where], layouts=layouts)
        return updates, QuantizedState(treedef.unflatten(_replaced(new_leaves, where, fresh)))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def state_bytes(tree: Any) -> int:
    """Total bytes of the arrays in ``tree`` (e.g. an optimizer state), from their dtypes."""
    return sum(
        int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )
