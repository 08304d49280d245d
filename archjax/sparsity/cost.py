"""Storage cost of a sparse (and quantized) parameter tree.

Formats, per leaf whose mask prunes something (others are stored dense):

- ``"bitmap"``: the kept values plus one bit per position of the leaf.
- ``"index16"``: the kept values plus a 16-bit index per kept value (offsets within
  blocks of 65536 positions, as in CSR with 16-bit column indices).
- ``"n:m"``: the kept values plus ``ceil(log2(m))`` bits of position per kept value;
  for 2:4 that is the 2 bits of metadata per kept value of NVIDIA's sparse tensor cores.

Bits per value come from ``bits`` (an int, or ``path -> int`` to combine with a
quantization policy); leaves not pruned cost ``numel * bits``.

:func:`sparse_bops` scales each layer of a quantization cost report
(:func:`archjax.quant.report`: MACs x weight bits x activation bits) by the kept
fraction of its kernel: the bit operations of a sparse, quantized model when zero
weights are skipped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np

FORMATS = ("bitmap", "index16", "n:m")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseCost:
    """Parameter counts and storage of a masked tree."""

    params: int  # every parameter
    nonzero: int  # kept parameters (mask True)
    dense_bits: int  # params * bits, no sparsity
    sparse_bits: int  # values + index overhead in the chosen format

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0


def sparse_cost(
    params, mask, bits: int | Callable[[str], int] = 32, *, fmt: str = "bitmap", m: int = 4
) -> SparseCost:
    """Counts kept parameters and the bits of storing them in format ``fmt``.

    Args:
      params: parameters (only shapes are read).
      mask: a bool per weight beside ``params`` (True = kept).
      bits: bits per stored value, or a function of the "/"-joined leaf path.
      fmt: "bitmap", "index16" or "n:m" (see the module docstring).
      m: the group size for "n:m".

    Returns:
      A :class:`SparseCost`.

    Example:
      >>> sparse_cost(params, n_m(params, prunable=p), bits=4, fmt="n:m").sparse_bits
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}; allowed: {', '.join(FORMATS)}.")
    bits_of = bits if callable(bits) else (lambda _: bits)
    total = kept = dense = sparse = 0
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, x), k in zip(flat, jax.tree.leaves(mask), strict=True):
        b = int(bits_of(jax.tree_util.keystr(path, simple=True, separator="/")))
        n = int(np.prod(np.shape(x)))
        nz = int(np.sum(np.asarray(k)))
        total, kept, dense = total + n, kept + nz, dense + n * b
        if nz == n:
            sparse += n * b
        elif fmt == "bitmap":
            sparse += nz * b + n
        elif fmt == "index16":
            sparse += nz * (b + 16)
        else:
            sparse += nz * (b + max(1, math.ceil(math.log2(m))))
    return SparseCost(params=total, nonzero=kept, dense_bits=dense, sparse_bits=sparse)


def sparse_bops(report, mask) -> float:
    """Bit operations of ``report``'s layers with each one's MACs scaled by its density.

    Args:
      report: a cost report whose ``layers`` have ``path`` (module path), ``bops`` and
        ``kind`` (:func:`archjax.quant.report`, which counts the quantization bits).
      mask: a bool per weight beside the model's ``params``; a layer's density is the
        kept fraction of ``<path>/kernel`` (1 for layers without one, e.g. attention's
        activation x activation products).

    Returns:
      ``sum(layer.bops * density)``; with every mask True it is ``report.bops``.

    Example:
      >>> sparse_bops(quant.report(model, rules, (1, 32, 32, 3)), mask) / report.bops
    """
    density = {
        jax.tree_util.keystr(path, simple=True, separator="/"): float(np.mean(np.asarray(k)))
        for path, k in jax.tree_util.tree_flatten_with_path(mask)[0]
    }
    return float(sum(layer.bops * density.get(f"{layer.path}/kernel", 1.0)
                     for layer in report.layers))  # fmt: skip
