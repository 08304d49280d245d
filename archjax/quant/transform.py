"""``quantize(model, rules)``: fake-quantize any Flax model without changing its code.

The quantized model is the same Linen module (same fields, same ``init``/``apply``
signature, same ``params`` tree) whose ``__call__`` runs inside
:func:`archjax.quant.intercept.intercept`: every convolution, ``dot_general``
(``nn.Dense``), two-operand ``jnp.einsum`` (attention, Mixer), ``jnp.dot`` and
``jnp.matmul`` that a Flax module runs is handed to the transform with the module's
"/"-joined path (``"stage1_block1/conv1"``), which picks the first matching
:class:`~archjax.quant.rules.QuantRule`; the op's operands are fake-quantized before
the original op runs:

- a *weight* operand, one computed from the variables and not from the inputs (a
  kernel used as is, or computed, as by weight-standardized convs), with the rule's
  ``weight`` format, scales computed from the weight on the fly (or learned, LSQ,
  when ``learned_scale``). Which operand that is comes from the data flow of the
  float model (:func:`archjax.quant.intercept.find_layers`, traced abstractly once
  per input signature), never from shapes;
- every other operand (the input of a conv/dense layer, both operands of an
  attention einsum) with the rule's ``activation`` format. Its scale comes from a
  running average in the ``quant_stats`` collection when that collection holds a
  calibrated value (static scales, as deployed), otherwise from the current batch
  (dynamic scales). The running average is updated whenever ``quant_stats`` is
  mutable (``mutable=["quant_stats"]``, see :func:`archjax.quant.ptq.calibrate_model`);
  a PACT clip (Choi et al., 2018) replaces it when ``learned_scale``.

Training therefore works with the standard train step (``mutable=["batch_stats"]``)
with dynamic activation scales; calibrate ``quant_stats`` afterwards for static ones.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archjax.quant.calibration import QParams, calibrate_tensor
from archjax.quant.intercept import WEIGHT, Op, find_layers, intercept
from archjax.quant.learned import lsq_fake_quant, pact
from archjax.quant.numerics import fake_quant
from archjax.quant.rules import QuantRule, match_rule
from archjax.tree_paths import match_path

QUANT_STATS = "quant_stats"


@dataclasses.dataclass
class _Trace:
    """Per-call state of one quantized ``__call__``."""

    rules: tuple[QuantRule, ...]
    momentum: float
    roles: dict  # op key -> (lhs role, rhs role), from the float model's data flow
    layers: dict = dataclasses.field(default_factory=dict)  # op name -> rule or None
    weights: dict = dataclasses.field(default_factory=dict)  # op name -> (param path, rule)


def _param_name(module: nn.Module, x: Any) -> str | None:
    """The name of the module's own parameter that *is* ``x`` (None if none is)."""
    params = module.variables.get("params", {})
    return next((k for k, v in params.items() if v is x), None)


def _quant_weight(x, rule: QuantRule, scope, name: str):
    fmt, gran = rule.weight, rule.weight_granularity
    xs = jax.lax.stop_gradient(x)
    if rule.learned_scale:  # LSQ (Esser et al., 2020): the scale is a parameter
        init = lambda _: (
            calibrate_tensor(xs, fmt, granularity=gran, method=rule.weight_calibration).scale
        )
        scale = scope.param(f"{name}_weight_scale", init)
        return lsq_fake_quant(x, scale, fmt)
    qp = calibrate_tensor(xs, fmt, granularity=gran, method=rule.weight_calibration)
    return fake_quant(x, fmt, qp, granularity=gran, ste=rule.ste)


def _running(scope, name: str, dyn: QParams, momentum: float, initializing: bool) -> QParams:
    """The activation's static QParams from ``quant_stats`` (updated if mutable), else ``dyn``."""
    mutable = scope.is_mutable_collection(QUANT_STATS)
    if not mutable and not scope.has_variable(QUANT_STATS, name):
        return dyn  # no calibration state given: dynamic scales

    def init():
        stat = {"scale": dyn.scale, "count": jnp.zeros((), jnp.int32)}
        if dyn.zero_point is not None:  # averaged in float, rounded when used
            stat["zero_point"] = dyn.zero_point.astype(jnp.float32)
        return stat

    var = scope.variable(QUANT_STATS, name, init)
    stat = var.value
    if mutable and not initializing:
        # Cumulative mean over the first 1 / (1 - momentum) batches, then an EMA: a
        # calibration run of N batches averages them all, a long run follows drift.
        w = jnp.maximum(1.0 / (stat["count"] + 1.0), 1.0 - momentum)
        new = {k: v + w * (getattr(dyn, k) - v) for k, v in stat.items() if k != "count"}
        new = jax.tree.map(lambda a, b: a.astype(b.dtype), new, {k: stat[k] for k in new})
        stat = {**new, "count": stat["count"] + 1}
        var.value = stat
    calibrated = stat["count"] > 0
    pick = lambda s, d: jnp.where(calibrated, jnp.round(s) if d.dtype == jnp.int32 else s, d)
    zp = None if dyn.zero_point is None else pick(stat["zero_point"], dyn.zero_point)
    zp = None if zp is None else zp.astype(jnp.int32)
    return QParams(scale=pick(stat["scale"], dyn.scale), zero_point=zp)


def _quant_activation(x, rule: QuantRule, scope, name: str, momentum: float, initializing: bool):
    fmt, gran = rule.activation, rule.activation_granularity
    xs = jax.lax.stop_gradient(x)
    if rule.learned_scale:  # PACT (Choi et al., 2018): a learned clip
        amax = jnp.max(jnp.abs(xs)).astype(jnp.float32)
        init = lambda _: jnp.where(amax > 0, amax, 6.0)  # an all-zero init batch: ReLU6's clip
        alpha = scope.param(f"{name}_act_clip", init)
        return pact(x, alpha, fmt)
    dyn = calibrate_tensor(xs, fmt, granularity=gran, method=rule.activation_calibration)
    qp = _running(scope, name, dyn, momentum, initializing)
    return fake_quant(x, fmt, qp, granularity=gran, ste=rule.ste)


def _quantize_op(tr: _Trace, op: Op):
    """Fake-quantizes one intercepted op's operands as its rule says, then runs it."""
    rule = match_rule(tr.rules, op.path)
    tr.layers[op.name] = rule  # the root module's path is ""
    if rule is None or (rule.weight is None and rule.activation is None):
        return op.call(*op.operands)
    if op.key not in tr.roles:
        raise RuntimeError(
            f"Layer {op.name!r} did not run when the float model was traced; "
            "quantize needs a model whose layers do not depend on the quantization."
        )
    module, (lhs, rhs) = op.module, op.operands
    scope, init = module.scope, module.is_initializing()
    new = []
    for side, t, role in zip(("lhs", "rhs"), (lhs, rhs), tr.roles[op.key], strict=True):
        name = f"{op.name.rsplit(':', 1)[1]}_{side}"
        if role == WEIGHT and rule.weight is not None:
            pname = _param_name(module, t)
            ppath = None if pname is None else (*module.scope.path, pname)
            tr.weights[op.name] = (ppath, rule)
            t = _quant_weight(t, rule, scope, name)
        elif role != WEIGHT and rule.activation is not None:
            t = _quant_activation(t, rule, scope, name, tr.momentum, init)
        new.append(t)
    return op.call(*new)


def _float_roles(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """Operand roles of every op of the float model on these inputs (cached per signature)."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    is_input = [isinstance(a, (jax.Array, np.ndarray)) for a in leaves]
    inputs = [a for a, i in zip(leaves, is_input, strict=True) if i]
    scope = module.scope
    initializing = module.is_initializing()
    names = {*scope.rngs, "params"} if initializing else set(scope.rngs)
    keys = {name: jax.random.key(0) for name in names}  # values unused: abstract trace
    state = keys if initializing else flax.core.unfreeze(module.variables)
    signature = (
        initializing,
        treedef,
        tuple((a.shape, a.dtype) if i else repr(a) for a, i in zip(leaves, is_input, strict=True)),
        jax.tree.structure(state),
        tuple((a.shape, a.dtype) for a in jax.tree.leaves(state)),
        repr(scope.mutable),
    )
    cache = type(module)._quant_roles
    if signature in cache:
        return cache[signature]
    base = _float_copy(module, parent=None, name=None)

    def call(state, inputs):
        it = iter(inputs)
        merged = [next(it) if i else x for x, i in zip(leaves, is_input, strict=True)]
        a, kw = jax.tree.unflatten(treedef, merged)
        if initializing:
            return base.init(state, *a, **kw)
        return base.apply(state, *a, rngs=keys, mutable=scope.mutable, **kw)

    roles = {layer.key: layer.operands for layer in find_layers(call, state, inputs)}
    cache[signature] = roles
    return roles


def _warn_unmatched(rules: Sequence[QuantRule], layers: dict) -> None:
    paths = sorted({name.rsplit(":", 1)[0] for name in layers})
    for rule in rules:
        if not any(match_path(rule.pattern, p) for p in paths):
            warnings.warn(
                f"QuantRule pattern {rule.pattern!r} matches no layer. Layer paths: "
                f"{', '.join(repr(p) for p in paths)}.",
                UserWarning,
                stacklevel=4,
            )


def _quantized_call(method: Callable[..., Any]) -> Callable[..., Any]:
    def __call__(self, *args, **kwargs):
        cls = type(self)
        tr = _Trace(cls._quant_rules, cls._quant_momentum, _float_roles(self, args, kwargs))
        with intercept(functools.partial(_quantize_op, tr), root=self):
            out = method(self, *args, **kwargs)
        cls._quant_layers = dict(tr.layers)
        cls._quant_weights = dict(tr.weights)
        _warn_unmatched(tr.rules, tr.layers)
        return out

    return __call__


def quantize_model(
    model: nn.Module, rules: Sequence[QuantRule], *, momentum: float = 0.99
) -> nn.Module:
    """Returns ``model`` with fake-quantized convolutions, dense layers and einsums.

    Quantization-aware training follows Jacob et al. (2018) and the rules' straight-
    through estimators (Bengio et al., 2013); learned scales follow LSQ (Esser et al.,
    2020) and PACT (Choi et al., 2018). The returned module has the same fields, the
    same ``init``/``apply`` signature and the same ``params`` tree as ``model`` (plus
    learned scales if a rule asks for them), so float checkpoints load into it. Its
    ``init`` also creates the ``quant_stats`` collection (activation calibration).

    Args:
      model: any Flax Linen module (e.g. ``archjax.models.create("resnet20")``).
      rules: :class:`QuantRule` s in priority order; the first rule whose pattern is
        found in a layer's module path decides that layer; unmatched layers stay float.
        A rule that matches no layer warns (with the list of layer paths) when traced.
      momentum: EMA momentum of the running activation scales in ``quant_stats``
        (the first ``1 / (1 - momentum)`` updates are a plain mean).

    Returns:
      The quantized module.

    Raises:
      ValueError: ``rules`` holds something that is not a :class:`QuantRule`, or
        ``momentum`` is outside ``[0, 1)``.

    Example:
      >>> int8, int4 = IntFormat(bits=8), IntFormat(bits=4)
      >>> rules = first_last_rules(int8, int4, activation=int8)
      >>> qmodel = quantize_model(archjax.models.create("resnet20", num_classes=10), rules)
      >>> variables = qmodel.init(jax.random.key(0), x, train=False)  # + quant_stats
    """
    rules = tuple(rules)
    for i, rule in enumerate(rules):
        if not isinstance(rule, QuantRule):
            raise ValueError(f"rules[{i}] is a {type(rule).__name__}; expected a QuantRule.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
    base = unquantized(model)
    base_cls = type(base)
    attrs = {
        "__call__": _quantized_call(base_cls.__call__),
        "_quant_rules": rules,
        "_quant_momentum": momentum,
        "_quant_layers": {},
        "_quant_weights": {},
        "_quant_roles": {},
        "_unquantized_type": base_cls,
        "__module__": base_cls.__module__,
    }
    qcls = type(base_cls.__name__, (base_cls,), attrs)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    return qcls(**{k: v for k, v in fields.items() if k != "parent"})


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` comes from :func:`quantize`."""
    return hasattr(type(model), "_unquantized_type")


def quant_rules(model: nn.Module) -> tuple[QuantRule, ...]:
    """The rules a quantized model was built with (empty for a float model)."""
    return getattr(type(model), "_quant_rules", ())


def _float_copy(model: nn.Module, **overrides) -> nn.Module:
    """A new, unbound float module with the fields of ``model``."""
    cls = getattr(type(model), "_unquantized_type", type(model))
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init}
    fields.pop("parent", None)
    return cls(**{**fields, **overrides})


def unquantized(model: nn.Module) -> nn.Module:
    """The float module behind a quantized one (``model`` itself if it is float)."""
    return _float_copy(model) if is_quantized(model) else model


def layer_rules(model: nn.Module, *args, **kwargs) -> dict[str, QuantRule | None]:
    """Which rule each intercepted op of a quantized model gets, by ``"path:op"`` name.

    Traces ``model.init`` abstractly (no FLOPs) with the given inputs.

    Args:
      model: a module from :func:`quantize_model`.
      *args: model inputs, e.g. ``jnp.zeros((1, 16, 16, 1))``.
      **kwargs: model keyword arguments, e.g. ``train=False``.

    Returns:
      ``{"stage1_block1/conv1:conv0": rule, "head:dot_general0": rule, ...}`` in call
      order; ``None`` for ops that no rule matches.

    Example:
      >>> layer_rules(qmodel, jnp.zeros((1, 16, 16, 1)), train=False)
    """
    if not is_quantized(model):
        raise ValueError("layer_rules needs a model returned by archjax.quant.quantize.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
    return dict(type(model)._quant_layers)


def quantize(model: nn.Module, rules: Sequence[QuantRule], *, momentum: float = 0.99) -> nn.Module:
    """Deprecated alias of :func:`quantize_model` (kept for one release)."""
    warnings.warn(
        "archjax.quant.quantize is deprecated; use archjax.quant.quantize_model (the model "
        "transform). The tensor-level op is archjax.quant.quantize_codes.",
        DeprecationWarning,
        stacklevel=2,
    )
    return quantize_model(model, rules, momentum=momentum)


def quantized_weights(model: nn.Module, *args, **kwargs) -> dict[str, tuple]:
    """Which parameter each weight-quantized op uses, by ``"path:op"`` name.

    Args:
      model: a module from :func:`quantize_model`.
      *args: model inputs (only shapes are used).
      **kwargs: model keyword arguments, e.g. ``train=False``.

    Returns:
      ``{"head:dot_general0": (("head", "kernel"), rule), ...}``; the parameter path
      is None where the layer computes its kernel (weight-standardized convolutions).

    Example:
      >>> quantized_weights(qmodel, jnp.zeros((1, 16, 16, 1)), train=False)
    """
    layer_rules(model, *args, **kwargs)
    return dict(type(model)._quant_weights)
