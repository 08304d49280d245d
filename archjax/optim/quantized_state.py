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
    if bits == 4 and block_size % 2:
        raise ValueError(f"block_size must be even for 4-bit states, got {block_size}.")
    # A tensor smaller than one block is one block of its own (even) size: no padding.
    block_size = min(block_size, x.size + x.size % 2)
    codes, absmax = _quantize(x, bits=bits, signed=signed, block_size=block_size)
    return QuantizedArray(codes, absmax, shape=tuple(x.shape), bits=bits, signed=signed)


def _nearest_index(code: np.ndarray, x: jax.Array) -> jax.Array:
    """Index of the nearest entry of the sorted ``code`` (size a power of 2): a binary search.

    Counts the midpoints between neighbouring entries that lie below ``x``. Written out
    rather than ``jnp.searchsorted``, whose first gather (constant table, constant
    indices) XLA constant-folds into a tensor the size of ``x``: seconds per large state.
    """
    mid_np = (code[1:] + code[:-1]) / 2
    midpoints = jnp.asarray(mid_np)
    step = code.size // 2
    idx = jnp.where(x > float(mid_np[step - 1]), step, 0)
    step //= 2
    while step >= 1:
        idx = idx + jnp.where(x > midpoints[idx + step - 1], step, 0)
        step //= 2
    return idx


# Jitted so that eager calls (``tx.init`` outside jit) compile once per shape; inside an
# outer jit it is inlined.
@functools.partial(jax.jit, static_argnames=("bits", "signed", "block_size"))
def _quantize(x, *, bits: int, signed: bool, block_size: int):
    # Inside a jitted init the moments are constants (zeros); without the barrier XLA
    # constant-folds the whole quantization, which takes minutes for a ResNet-50.
    flat = jax.lax.optimization_barrier(jnp.ravel(x).astype(jnp.float32))
    pad = -flat.size % block_size
    blocks = jnp.pad(flat, (0, pad)).reshape(-1, block_size)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    normed = blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None]
    codes = _nearest_index(_code_book(bits, signed), normed).astype(jnp.uint8)
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return codes, absmax


def dequantize_blockwise(q: QuantizedArray) -> jax.Array:
    """The float32 array that ``q`` stands for."""
    code = jnp.asarray(_code_book(q.bits, q.signed))
    codes = q.codes
    if q.bits == 4:
        codes = jnp.stack([codes & 0xF, codes >> 4], axis=-1).reshape(codes.shape[0], -1)
    values = code[codes.astype(jnp.int32)] * q.absmax[:, None]
    size = int(np.prod(q.shape, dtype=np.int64))
    return values.reshape(-1)[:size].reshape(q.shape)


class QuantizedState(NamedTuple):
    """State of :func:`quantize_state`: the inner state with large moments quantized."""

    inner: Any


def _field_names(path) -> set[str]:
    names = set()
    for key in path:
        for attr in ("name", "key"):
            value = getattr(key, attr, None)
            if isinstance(value, str):
                names.add(value)
    return names


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

    def compress(path, x, template=None):
        if isinstance(template, QuantizedArray):
            return quantize_blockwise(x, bits=bits, signed=template.signed, block_size=block)
        if template is not None:
            return x
        eligible = (
            isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct)
            and jnp.issubdtype(x.dtype, jnp.floating)
            and x.size >= min_size
        )
        if not eligible:
            return x
        signed = not (_field_names(path) & unsigned)
        return quantize_blockwise(x, bits=bits, signed=signed, block_size=block)

    def decompress(state):
        return jax.tree.map(
            lambda q: dequantize_blockwise(q) if isinstance(q, QuantizedArray) else q,
            state,
            is_leaf=lambda q: isinstance(q, QuantizedArray),
        )

    def init_fn(params):
        return QuantizedState(jax.tree_util.tree_map_with_path(compress, inner.init(params)))

    def update_fn(updates, state, params=None, **extra_args):
        inner_state = decompress(state.inner)
        updates, new_inner = optax.with_extra_args_support(inner).update(
            updates, inner_state, params, **extra_args
        )
        new_inner = jax.tree.map(
            lambda t, x: compress(None, x, t),
            state.inner,
            new_inner,
            is_leaf=lambda q: isinstance(q, QuantizedArray),
        )
        return updates, QuantizedState(new_inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def state_bytes(tree: Any) -> int:
    """Total bytes of the arrays in ``tree`` (e.g. an optimizer state), from their dtypes."""
    return sum(
        int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )
