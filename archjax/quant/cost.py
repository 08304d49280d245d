"""Cost model of a quantization policy: per-layer bits, model size, MACs and BOPs.

The model is traced abstractly (``jax.eval_shape`` and ``jax.make_jaxpr``, nothing
is compiled or run), every convolution and matrix product in the jaxpr becomes a
row, and the Flax name stack of the op gives the layer path that the rules match.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archjax.quant.rules import QuantRule, match_rule

__all__ = ["CostReport", "LayerCost", "report"]

FLOAT_BITS = 32  # bits of anything a rule leaves unquantized


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerCost:
    """One convolution or matrix product of the model."""

    path: str  # "/"-joined Flax module path, e.g. "stage1_block1/conv1"
    kind: str  # "conv", "dense" (activation x weight) or "matmul" (activation x activation)
    params: int  # elements of the weight operand (0 for "matmul")
    macs: int  # multiply-accumulates for the traced input shape
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
        """Total multiply-accumulates."""
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
        header = f"{'layer':<44} {'kind':<6} {'params':>10} {'MACs':>14} {'w':>3} {'a':>3} "
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


_MODULE_NAME = re.compile(r"^[\w\-]+$")


def _layer_path(name_stack: str, root: str) -> str:
    """Flax module path from a jaxpr name stack.

    Drops the root module's class name, ``module.method`` scopes and scopes that
    cannot be module names (``jnp.einsum`` names a scope after its subscripts).
    """
    parts = [p for p in name_stack.split("/") if p]
    if parts and parts[0] == root:
        parts = parts[1:]
    return "/".join(p for p in parts if _MODULE_NAME.match(p))


def _sub_jaxprs(eqn) -> list:
    """The jaxprs inside an equation's parameters (pjit, custom_jvp, remat, scan, cond)."""
    found = []
    for value in eqn.params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jax.extend.core.Jaxpr):
                found.append(v)
    return found


def _conv_macs(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
    per_output = rhs.shape[spec[1]] * math.prod(rhs.shape[d] for d in spec[2:])
    return math.prod(out.shape) * per_output


def _dot_macs(eqn) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def _walk(jaxpr, depends: list[bool], stack: str, root: str, times: int, rows: list) -> list[bool]:
    """Appends a row per conv/dot to ``rows``; returns which outputs depend on the input."""
    env = {}
    for var, dep in zip(jaxpr.invars, depends, strict=True):
        env[var] = dep

    def dep_of(v) -> bool:
        return env.get(v, False) if isinstance(v, jax.extend.core.Var) else False

    for eqn in jaxpr.eqns:
        deps = [dep_of(v) for v in eqn.invars]
        name = eqn.primitive.name
        here = "/".join(p for p in (stack, str(eqn.source_info.name_stack)) if p)
        if name in ("conv_general_dilated", "dot_general"):
            weight = next((i for i in (1, 0) if not deps[i]), None)
            kind = "conv" if name == "conv_general_dilated" else "dense"
            macs = _conv_macs(eqn) if kind == "conv" else _dot_macs(eqn)
            if weight is None:
                kind, params = "matmul", 0
            else:
                params = math.prod(eqn.invars[weight].aval.shape)
            if any(deps):  # a product of two weights is not a layer
                rows.append((_layer_path(here, root), kind, params, macs * times))
        subs = _sub_jaxprs(eqn)
        outs = any(deps)
        for sub in subs:
            length = eqn.params.get("length", 1) if name == "scan" else 1
            if len(sub.invars) == len(deps):
                sub_deps = deps
            elif len(sub.invars) == len(deps) - 1:  # cond: the branch index comes first
                sub_deps = deps[1:]
            else:
                sub_deps = [any(deps)] * len(sub.invars)
            _walk(sub, sub_deps, here, root, times * length, rows)
        for v in eqn.outvars:
            env[v] = outs
    return [dep_of(v) for v in jaxpr.outvars]


def _bits(fmt) -> int:
    return FLOAT_BITS if fmt is None else fmt.bits


def report(model: nn.Module, rules: Sequence[QuantRule], input_shape: Sequence[int]) -> CostReport:
    """Per-layer cost of quantizing ``model`` with ``rules`` (first matching rule wins).

    Every convolution and matrix product of ``model.apply(variables, x)`` is a row:
    MACs from the op's shapes (a conv output element costs ``kh * kw * cin / groups``
    MACs), weight bits and activation bits from the first rule that matches its
    layer path (32 when no rule matches or a rule leaves that side in float), and
    ``BOPs = MACs * weight_bits * activation_bits``, the bit-operation count of
    Pareto-optimal 4-bit ResNets (Abdolrashidi et al., 2021) and HAWQ-V3 (Yao et
    al., 2021). A product of two activations (attention) is a ``"matmul"`` row with
    no weights whose two operands both use the activation bits. Model size counts
    each row's weights at its weight bits and every other leaf of ``params``
    (biases, norm scales) at 32 bits; quantization scales and ``batch_stats`` are
    not counted. Nothing is compiled: the model is traced with abstract values.

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
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
    closed = jax.make_jaxpr(lambda v, inp: model.apply(v, inp))(variables, x)
    n_vars = len(jax.tree_util.tree_leaves(variables))
    raw: list = []
    _walk(closed.jaxpr, [False] * n_vars + [True], "", type(model).__name__, 1, raw)

    layers = []
    for path, kind, params, macs in raw:
        rule = match_rule(rules, path)
        act_bits = _bits(rule and rule.activation)
        w_bits = act_bits if kind == "matmul" else _bits(rule and rule.weight)
        layers.append(
            LayerCost(
                path=path,
                kind=kind,
                params=params,
                macs=macs,
                weight_bits=w_bits,
                activation_bits=act_bits,
            )
        )
    all_params = sum(
        math.prod(a.shape) for a in jax.tree_util.tree_leaves(variables.get("params", {}))
    )
    weight_params = sum(layer.params for layer in layers)
    return CostReport(layers=tuple(layers), other_params=max(all_params - weight_params, 0))
