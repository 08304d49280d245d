"""Cost model of a quantization policy: per-layer bits, model size, MACs and BOPs.

The model is traced abstractly (nothing is compiled or run) through
:func:`archjax.quant.intercept.find_layers`, the layer finder the transform uses:
every layer op it intercepts becomes a row, under the module path the rules match,
and its weight is the operand computed from the parameters, not from the input.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archjax.quant.intercept import ACTIVATION, WEIGHT, find_layers
from archjax.quant.rules import QuantRule, match_rule
from archjax.quant.transform import unquantized

__all__ = ["CostReport", "LayerCost", "report"]

FLOAT_BITS = 32  # bits of anything a rule leaves unquantized


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerCost:
    """One convolution or matrix product of the model."""

    path: str  # "/"-joined Flax module path, e.g. "stage1_block1/conv1"
    kind: str  # "conv", "dense" (activation x weight) or "matmul" (activation x activation)
    params: int  # elements of the weight operand (0 for "matmul")
    macs: int  # shape MACs: output elements x kh*kw*cin/groups, zero-padding taps included
    weight_bits: int  # bits per weight (for "matmul": bits of the second activation)
    activation_bits: int  # bits per input activation

    @property
    def bytes(self) -> float:
        """Storage of the weights, ``params * weight_bits / 8``."""
        return self.params * self.weight_bits / 8

    @property
    def bops(self) -> int:
        """Bit operations, ``macs * weight_bits * activation_bits``."""
        return self.macs * self.weight_bits * self.activation_bits


@dataclasses.dataclass(frozen=True, kw_only=True)
class CostReport:
    """Per-layer costs and totals of a model under a list of rules (see :func:`report`)."""

    layers: tuple[LayerCost, ...]  # in execution order
    other_params: int  # parameters outside the rows (biases, norms), counted at 32 bits

    @property
    def macs(self) -> int:
        """Total shape MACs (padding taps included; see :func:`report`)."""
        return sum(layer.macs for layer in self.layers)

    @property
    def bops(self) -> int:
        """Total bit operations."""
        return sum(layer.bops for layer in self.layers)

    @property
    def weight_params(self) -> int:
        """Parameters in the weight operands of the rows."""
        return sum(layer.params for layer in self.layers)

    @property
    def size_bytes(self) -> float:
        """Model size: row weights at their bits plus every other parameter at 32 bits."""
        return sum(layer.bytes for layer in self.layers) + self.other_params * FLOAT_BITS / 8

    def __str__(self) -> str:
        header = f"{'layer':<44} {'kind':<6} {'params':>10} {'shape MACs':>14} {'w':>3} {'a':>3} "
        header += f"{'bytes':>12} {'BOPs':>18}"
        lines = [header, "-" * len(header)]
        for r in self.layers:
            lines.append(
                f"{r.path:<44} {r.kind:<6} {r.params:>10,} {r.macs:>14,} {r.weight_bits:>3} "
                f"{r.activation_bits:>3} {r.bytes:>12,.0f} {r.bops:>18,}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total (+ ' + format(self.other_params, ',') + ' other params at 32 bits)':<51} "
            f"{self.weight_params:>10,} {self.macs:>14,} {'':>7} {self.size_bytes:>12,.0f} "
            f"{self.bops:>18,}"
        )
        return "\n".join(lines)


def _bits(fmt) -> int:
    return FLOAT_BITS if fmt is None else fmt.bits


def report(model: nn.Module, rules: Sequence[QuantRule], input_shape: Sequence[int]) -> CostReport:
    """Per-layer cost of quantizing ``model`` with ``rules`` (first matching rule wins).

    Every layer op of ``model.apply(variables, x)`` that
    :func:`archjax.quant.intercept.find_layers` finds (the ops the transform
    quantizes: convolutions, ``dot_general``, two-operand ``einsum``, ``dot`` and
    ``matmul`` run by a Flax module) is a row: MACs from the op's shapes (a conv
    output element costs ``kh * kw * cin / groups`` MACs, taps on zero padding
    included: the *shape* count of papers, unlike the *executed* count of
    :func:`archjax.models.model_stats`, which skips padding), weight bits and
    activation bits from the first rule that matches its layer path (32 when no
    rule matches or a rule leaves that side in float), and ``BOPs = MACs *
    weight_bits * activation_bits``, the bit-operation count of Pareto-optimal
    4-bit ResNets (Abdolrashidi et al., 2021) and HAWQ-V3 (Yao et al., 2021). The
    weight is the operand computed from the parameters, not from the input. A
    product of two activations (attention) is a ``"matmul"`` row with no weights
    whose two operands both use the activation bits. Model size counts each row's
    weights at its weight bits and every other leaf of ``params`` (biases, norm
    scales) at 32 bits; quantization scales and ``batch_stats`` are not counted.
    Nothing is compiled: the model is traced with abstract values.

    Args:
        model: a Flax module called as ``model.apply(variables, x)``.
        rules: :class:`~archjax.quant.rules.QuantRule` s in priority order.
        input_shape: full input shape including the batch, e.g. ``(1, 224, 224, 3)``.

    Returns:
        A :class:`CostReport`; ``print`` it for a table.

    Example:
        >>> rules = first_last_rules(IntFormat(bits=8), IntFormat(bits=4))
        >>> r = report(models.create("resnet50"), rules, (1, 224, 224, 3))
        >>> r.size_bytes, r.bops
    """
    if len(input_shape) < 2:
        raise ValueError(f"input_shape={tuple(input_shape)} must include the batch axis")
    model = unquantized(model)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
    found = find_layers(lambda v, inp: model.apply(v, inp), variables, x, macs=True)

    layers = []
    for layer in found:
        if ACTIVATION not in layer.operands:
            continue  # a product of two weights is not a layer
        weight = next((i for i in (1, 0) if layer.operands[i] == WEIGHT), None)
        kind = "conv" if layer.kind == "conv" else "dense"
        if weight is None:
            kind = "matmul"
        rule = match_rule(rules, layer.path)
        act_bits = _bits(rule and rule.activation)
        w_bits = act_bits if kind == "matmul" else _bits(rule and rule.weight)
        layers.append(
            LayerCost(
                path=layer.path,
                kind=kind,
                params=0 if weight is None else layer.sizes[weight],
                macs=layer.macs,
                weight_bits=w_bits,
                activation_bits=act_bits,
            )
        )
    all_params = sum(
        math.prod(a.shape) for a in jax.tree_util.tree_leaves(variables.get("params", {}))
    )
    weight_params = sum(layer.params for layer in layers)
    return CostReport(layers=tuple(layers), other_params=max(all_params - weight_params, 0))
