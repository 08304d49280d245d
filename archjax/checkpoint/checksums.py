"""Per-leaf checksums of a state: exact, so the same on any mesh and any process count."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def leaves_by_path(tree: Any) -> dict[str, Any]:
    """Leaves keyed by a '/'-joined path that is the same for dataclasses and saved dicts."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """A position-sensitive uint32 hash of a leaf's bits; exact, so sharding-independent."""
    if x.dtype == jnp.bool_:  # masks, optax.apply_if_finite's flag: bitcast refuses bool
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize in (1, 2):
        unsigned = jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    else:  # 8-byte leaves (x64 mode): two words each
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bits = bits.reshape(-1)
    i = jnp.arange(bits.size, dtype=jnp.uint32)
    # Integer sums wrap modulo 2**32 in any order: the same on any mesh.
    return jnp.sum((bits ^ (i * jnp.uint32(0x9E3779B9))) * (2 * i + 1), dtype=jnp.uint32)


@jax.jit
def start_checksums(tree: Any) -> Any:
    """Dispatches the checksums of ``tree`` (device values; :func:`resolve` waits for them)."""
    return jax.tree.map(_leaf_checksum, tree)


def resolve(sums: Any) -> dict[str, int]:
    """Device checksums (maybe still being computed) -> ``{path: int}`` (blocks)."""
    return {key: int(np.asarray(v.addressable_data(0))) for key, v in leaves_by_path(sums).items()}


def checksums(tree: Any) -> dict[str, int]:
    """Per-leaf checksums of a (possibly sharded, multi-process) pytree of arrays.

    Args:
      tree: arrays, on any mesh; every process must call this (it is one jitted
        global computation).

    Returns:
      ``{leaf path: uint32 checksum}``, equal for equal values whatever the sharding.

    Example:
      >>> checksums({"w": jnp.ones(3)})
      {'w': 2496349059}
    """
    return resolve(start_checksums(tree))
