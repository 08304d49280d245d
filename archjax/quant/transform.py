"""``quantize(model, rules)``: fake-quantize any Flax model without changing its code.

The quantized model is the same Linen module (same fields, same ``init``/``apply``
signature, same ``params`` tree) whose ``__call__`` runs with the array ops that
make layers intercepted: ``jax.lax.conv_general_dilated``, ``jax.lax.dot_general``
(``nn.Dense``), ``jnp.einsum`` (attention, Mixer) and ``jnp.dot``/``jnp.matmul``.
As in qwix (``qwix/_src/interception.py``, ``providers/qt.py``), each intercepted op
knows the Flax module that runs it; its "/"-joined path (``"stage1_block1/conv1"``)
picks the first matching :class:`~archjax.quant.rules.QuantRule`, and the op's
operands are fake-quantized before the original op runs:

- the *weight* operand (the convolution kernel, including kernels computed by
  weight-standardized convs, or a ``dot``/``einsum`` operand with the shape of one of
  the module's own parameters) with the rule's ``weight`` format, scales computed from
  the weight on the fly (or learned, LSQ, when ``learned_scale``);
- every *activation* operand (the input of a conv/dense layer, both operands of an
  attention einsum) with the rule's ``activation`` format. Its scale comes from a
  running average in the ``quant_stats`` collection when that collection holds a
  calibrated value (static scales, as deployed), otherwise from the current batch
  (dynamic scales). The running average is updated whenever ``quant_stats`` is
  mutable (``mutable=["quant_stats"]``, see :func:`archjax.quant.ptq.calibrate`); a
  PACT clip (Choi et al., 2018) replaces it when ``learned_scale``.

Training therefore works with the standard train step (``mutable=["batch_stats"]``)
with dynamic activation scales; calibrate ``quant_stats`` afterwards for static ones.
Interception patches module attributes while a quantized ``__call__`` is traced, so
it is not thread-safe to trace a quantized and a float model at once in two threads.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from archjax.quant.calibration import QParams, calibrate
from archjax.quant.learned import lsq_fake_quant, pact
from archjax.quant.numerics import fake_quant
from archjax.quant.rules import QuantRule, match_rule

QUANT_STATS = "quant_stats"
# (module, attribute, kind): the functions through which archjax models (and Flax's
# Dense/Conv) run their layers. Attribute patching, not code patching: the internal
# jax calls (jnp.einsum -> lax.dot_general) keep the original functions.
_TARGETS = (
    (jax.lax, "conv_general_dilated", "conv"),
    (jax.lax, "dot_general", "dot_general"),
    (jnp, "einsum", "einsum"),
    (jnp, "dot", "dot"),
    (jnp, "matmul", "matmul"),
)
_ORIGINAL = {kind: getattr(mod, attr) for mod, attr, kind in _TARGETS}


@dataclasses.dataclass
class _Trace:
    """Per-call state of one quantized ``__call__`` (thread-local)."""

    rules: tuple[QuantRule, ...]
    momentum: float
    stack: list = dataclasses.field(default_factory=list)  # current Flax modules
    counters: dict = dataclasses.field(default_factory=dict)  # (path, kind) -> n
    layers: dict = dataclasses.field(default_factory=dict)  # op name -> rule or None
    weights: dict = dataclasses.field(default_factory=dict)  # op name -> (param path, rule)
    busy: bool = False  # inside a handler: ops run unquantized


_local = threading.local()
_patch_lock = threading.Lock()
_patch_depth = 0


def _trace() -> _Trace | None:
    traces = getattr(_local, "traces", None)
    return traces[-1] if traces else None


def _module_path(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.scope.path)


def _own_params(module: nn.Module) -> list[jax.Array]:
    """The module's own parameters (not its children's)."""
    params = module.variables.get("params", {})
    return [v for v in params.values() if hasattr(v, "shape")]


def _param_name(module: nn.Module, x: Any) -> str | None:
    """The name of the module's own parameter that *is* ``x`` (None if none is)."""
    params = module.variables.get("params", {})
    return next((k for k, v in params.items() if v is x), None)


def _is_weight(module: nn.Module, x: Any) -> bool:
    """An operand is a weight if it is, or has the shape of, one of the module's parameters."""
    shape = getattr(x, "shape", None)
    return any(p is x or (p.ndim >= 2 and p.shape == shape) for p in _own_params(module))


def _quant_weight(x, rule: QuantRule, scope, name: str):
    fmt, gran = rule.weight, rule.weight_granularity
    xs = jax.lax.stop_gradient(x)
    if rule.learned_scale:  # LSQ (Esser et al., 2020): the scale is a parameter
        init = lambda _: calibrate(xs, fmt, granularity=gran, method=rule.weight_calibration).scale
        scale = scope.param(f"{name}_weight_scale", init)
        return lsq_fake_quant(x, scale, fmt)
    qp = calibrate(xs, fmt, granularity=gran, method=rule.weight_calibration)
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
    dyn = calibrate(xs, fmt, granularity=gran, method=rule.activation_calibration)
    qp = _running(scope, name, dyn, momentum, initializing)
    return fake_quant(x, fmt, qp, granularity=gran, ste=rule.ste)


def _handler(kind: str) -> Callable[..., Any]:
    original = _ORIGINAL[kind]

    def intercepted(*args, **kwargs):
        tr = _trace()
        if tr is None or tr.busy or not tr.stack:
            return original(*args, **kwargs)
        if kind == "einsum":
            subscripts, *operands = args
            if len(operands) != 2 or not isinstance(subscripts, str):
                return original(*args, **kwargs)  # pooling-style n-ary einsums: not a layer
            first, rest = 1, args[3:]
        else:
            first, rest = 0, args[2:]
        lhs, rhs = args[first], args[first + 1]
        module = tr.stack[-1]
        path = _module_path(module)
        n = tr.counters.get((path, kind), 0)
        tr.counters[(path, kind)] = n + 1
        op = f"{kind}{n}"
        rule = match_rule(tr.rules, path)
        tr.layers[f"{path}:{op}"] = rule  # the root module's path is ""
        if rule is None or (rule.weight is None and rule.activation is None):
            return original(*args, **kwargs)
        tr.busy = True
        try:
            scope, init = module.scope, module.is_initializing()
            if kind == "conv":
                kinds = ("activation", "weight")
            else:
                kinds = tuple(
                    "weight" if _is_weight(module, t) else "activation" for t in (lhs, rhs)
                )
            new = []
            for side, t, k in zip(("lhs", "rhs"), (lhs, rhs), kinds, strict=True):
                name = f"{op}_{side}"
                if k == "weight" and rule.weight is not None:
                    pname = _param_name(module, t)
                    ppath = None if pname is None else (*module.scope.path, pname)
                    tr.weights[f"{path}:{op}"] = (ppath, rule)
                    t = _quant_weight(t, rule, scope, name)
                elif k == "activation" and rule.activation is not None:
                    t = _quant_activation(t, rule, scope, name, tr.momentum, init)
                new.append(t)
        finally:
            tr.busy = False
        return original(*args[:first], *new, *rest, **kwargs)

    return intercepted


_HANDLERS = {kind: _handler(kind) for kind in _ORIGINAL}


def _patch(on: bool) -> None:
    global _patch_depth
    with _patch_lock:
        _patch_depth += 1 if on else -1
        if (on and _patch_depth == 1) or (not on and _patch_depth == 0):
            table = _HANDLERS if on else _ORIGINAL
            for mod, attr, kind in _TARGETS:
                setattr(mod, attr, table[kind])


def _track_modules(next_fun, args, kwargs, context):
    tr = _trace()
    if tr is None:
        return next_fun(*args, **kwargs)
    tr.stack.append(context.module)
    try:
        return next_fun(*args, **kwargs)
    finally:
        tr.stack.pop()


def _warn_unmatched(rules: Sequence[QuantRule], layers: dict) -> None:
    paths = sorted({name.rsplit(":", 1)[0] for name in layers})
    for rule in rules:
        if not any(re.search(rule.pattern, p) for p in paths):
            warnings.warn(
                f"QuantRule pattern {rule.pattern!r} matches no layer. Layer paths: "
                f"{', '.join(repr(p) for p in paths)}.",
                UserWarning,
                stacklevel=4,
            )


def _quantized_call(method: Callable[..., Any]) -> Callable[..., Any]:
    def __call__(self, *args, **kwargs):
        cls = type(self)
        tr = _Trace(rules=cls._quant_rules, momentum=cls._quant_momentum, stack=[self])
        _local.traces = [*getattr(_local, "traces", []), tr]
        _patch(True)
        try:
            with nn.intercept_methods(_track_modules):
                out = method(self, *args, **kwargs)
        finally:
            _patch(False)
            _local.traces = _local.traces[:-1]
        cls._quant_layers = dict(tr.layers)
        cls._quant_weights = dict(tr.weights)
        _warn_unmatched(tr.rules, tr.layers)
        return out

    return __call__


def quantize(model: nn.Module, rules: Sequence[QuantRule], *, momentum: float = 0.99) -> nn.Module:
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
      >>> qmodel = quantize(archjax.models.create("resnet20", num_classes=10), rules)
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
        "_unquantized_type": base_cls,
        "__module__": base_cls.__module__,
    }
    qcls = type(base_cls.__name__, (base_cls,), attrs)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    fields.pop("parent", None)
    return qcls(**fields)


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` comes from :func:`quantize`."""
    return hasattr(type(model), "_unquantized_type")


def quant_rules(model: nn.Module) -> tuple[QuantRule, ...]:
    """The rules a quantized model was built with (empty for a float model)."""
    return getattr(type(model), "_quant_rules", ())


def unquantized(model: nn.Module) -> nn.Module:
    """The float module behind a quantized one (``model`` itself if it is float)."""
    if not is_quantized(model):
        return model
    cls = type(model)._unquantized_type
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init}
    fields.pop("parent", None)
    return cls(**fields)


def layer_rules(model: nn.Module, *args, **kwargs) -> dict[str, QuantRule | None]:
    """Which rule each intercepted op of a quantized model gets, by ``"path:op"`` name.

    Traces ``model.init`` abstractly (no FLOPs) with the given inputs.

    Args:
      model: a module from :func:`quantize`.
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


def quantized_weights(model: nn.Module, *args, **kwargs) -> dict[str, tuple]:
    """Which parameter each weight-quantized op uses, by ``"path:op"`` name.

    Args:
      model: a module from :func:`quantize`.
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
