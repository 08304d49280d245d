"""Quantization parameters and the reshapes that map a granularity onto a tensor."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from archjax.quant._format import PerBlock, PerChannel, PerTensor
from archjax.quant._format import QParams as QParams  # re-exported: its old home

Array = jax.Array


def normalize_axis(axis: int, ndim: int, owner: str) -> int:
    """Returns ``axis`` in ``[0, ndim)`` or raises a ValueError naming ``owner``."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"{owner}.axis={axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def check_granularity(granularity: object) -> None:
    """Raises a ValueError unless ``granularity`` is one of the granularity classes."""
    if not isinstance(granularity, (PerTensor, PerChannel, PerBlock)):
        raise ValueError(
            f"granularity={granularity!r} is not allowed: use PerTensor(), PerChannel(axis) "
            "or PerBlock(block_size, axis)"
        )


def grouped(x: Array, granularity) -> Array:
    """Returns ``x`` reshaped so that a ``PerBlock`` gets its own block axis after ``axis``."""
    if not isinstance(granularity, PerBlock):
        return x
    axis = normalize_axis(granularity.axis, x.ndim, "PerBlock")
    size, block = x.shape[axis], granularity.block_size
    if size % block:
        raise ValueError(
            f"PerBlock.block_size={block} does not divide axis {axis} of length {size} "
            f"(shape {x.shape}); allowed: a divisor of {size}"
        )
    return x.reshape(x.shape[:axis] + (size // block, block) + x.shape[axis + 1 :])


def broadcast_param(p: Array | None, x_shape: tuple[int, ...], granularity) -> Array | None:
    """Reshapes a scale or zero point so it broadcasts against ``grouped(x)``."""
    if p is None:
        return None
    p = jnp.asarray(p)
    ndim = len(x_shape)
    if isinstance(granularity, PerTensor):
        if p.size != 1:
            raise ValueError(f"PerTensor quantization needs a scalar scale, got shape {p.shape}")
        return p.reshape(())
    if isinstance(granularity, PerChannel):
        axis = normalize_axis(granularity.axis, ndim, "PerChannel")
        if p.size not in (1, x_shape[axis]):
            raise ValueError(
                f"PerChannel(axis={granularity.axis}) needs {x_shape[axis]} scales for shape "
                f"{x_shape}, got shape {p.shape}"
            )
        if p.size == 1:
            return p.reshape(())
        return p.reshape(tuple(x_shape[axis] if i == axis else 1 for i in range(ndim)))
    axis = normalize_axis(granularity.axis, ndim, "PerBlock")
    blocks = x_shape[axis] // granularity.block_size
    want = x_shape[:axis] + (blocks,) + x_shape[axis + 1 :]
    if p.shape != want:
        raise ValueError(
            f"{granularity} needs scales of shape {want} for shape {x_shape}, got {p.shape}"
        )
    return jnp.expand_dims(p, axis + 1)


def rows(x: Array, granularity) -> tuple[Array, tuple[int, ...]]:
    """Returns ``x`` as ``[groups, elements]`` and the parameter shape the groups map to."""
    check_granularity(granularity)
    if isinstance(granularity, PerTensor):
        return x.reshape(1, -1), ()
    if isinstance(granularity, PerChannel):
        axis = normalize_axis(granularity.axis, x.ndim, "PerChannel")
        shape = tuple(x.shape[axis] if i == axis else 1 for i in range(x.ndim))
        return jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1), shape
    axis = normalize_axis(granularity.axis, x.ndim, "PerBlock")
    xg = grouped(x, granularity)
    shape = xg.shape[: axis + 1] + xg.shape[axis + 2 :]
    return jnp.moveaxis(xg, axis + 1, -1).reshape(-1, granularity.block_size), shape


def group_axes(ndim: int, granularity) -> tuple[int, ...]:
    """Axes of ``grouped(x)`` (``x`` of rank ``ndim``) that one scale covers."""
    if isinstance(granularity, PerTensor):
        return tuple(range(ndim))
    axis = normalize_axis(granularity.axis, ndim, type(granularity).__name__)
    if isinstance(granularity, PerBlock):
        return (axis + 1,)
    return tuple(i for i in range(ndim) if i != axis)


def reduce_groups(x: Array, granularity, fn) -> Array:
    """``fn(..., axis, keepdims=True)`` over each scale group, shaped like the scale.

    Reduces in place (no transpose), which is what per-step weight calibration needs.
    """
    check_granularity(granularity)
    xg = grouped(x, granularity)
    return to_param_shape(fn(xg, axis=group_axes(x.ndim, granularity), keepdims=True), granularity)


def to_param_shape(stat: Array, granularity) -> Array:
    """Reshapes a keepdims statistic of ``grouped(x)`` to the scale's shape."""
    if isinstance(granularity, PerTensor):
        return stat.reshape(())
    if isinstance(granularity, PerBlock):
        axis = normalize_axis(granularity.axis, stat.ndim - 1, "PerBlock")
        return jnp.squeeze(stat, axis + 1)
    return stat
