"""One way to find the layers of a Flax model: scoped interception of its array ops.

The quantization transform, the cost report and PTQ's BatchNorm folding all see a
model through :func:`intercept`. Inside the context (and only there, in this thread)
the five functions through which Flax layers and archjax models run their products,
``jax.lax.conv_general_dilated``, ``jax.lax.dot_general`` (``nn.Dense``),
``jnp.einsum`` (attention, Mixer), ``jnp.dot`` and ``jnp.matmul``, call a handler
with an :class:`Op`: the Flax module that runs it, its "/"-joined path and a name
``"path:kindN"``. Module calls are tracked with ``nn.intercept_methods``. On exit,
also by an exception, every patched attribute is the original again.

Which operand is a weight is decided by where it comes from, not by its shape:
:func:`find_layers` traces a function abstractly (``jax.make_jaxpr``), marks each
operand of each intercepted op, and follows the data flow from the function's
arguments. An operand computed from the variables (the parameter tree, or the init
key) and not from the model inputs is a ``"weight"`` (a kernel used as is, cast, or
computed, e.g. weight-standardized); one that depends on the inputs is an
``"activation"``, whatever its shape; one that depends on neither is a
``"constant"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# (module, attribute, kind). Attribute patching, not code patching: JAX's internal
# calls (jnp.einsum -> lax.dot_general) keep the original functions.
_TARGETS = (
    (jax.lax, "conv_general_dilated", "conv"),
    (jax.lax, "dot_general", "dot_general"),
    (jnp, "einsum", "einsum"),
    (jnp, "dot", "dot"),
    (jnp, "matmul", "matmul"),
)
ORIGINALS = {kind: getattr(mod, attr) for mod, attr, kind in _TARGETS}

ACTIVATION, WEIGHT, CONSTANT = "activation", "weight", "constant"
_INPUT, _STATE = 1, 2  # data-flow bits: depends on the model inputs / on the variables
_MARK = "archjax_operand"
_MARK_RE = re.compile(rf"{_MARK}(\d+)_(\d)")


@dataclasses.dataclass(frozen=True)
class Op:
    """One intercepted two-operand product, as a handler sees it."""

    module: nn.Module  # the innermost Flax module running it
    path: str  # its "/"-joined module path ("" for the root)
    key: str  # "path:kindN" with the path relative to the context's root
    name: str  # "path:kindN", e.g. "stage1_block1/conv1:conv0"
    kind: str  # "conv", "dot_general", "einsum", "dot" or "matmul"
    args: tuple
    kwargs: dict
    first: int  # position of the left operand in ``args``

    @property
    def operands(self) -> tuple[Any, Any]:
        """(lhs, rhs) as passed to the op."""
        return self.args[self.first], self.args[self.first + 1]

    def call(self, lhs, rhs):
        """Runs the original op on new operands (nothing inside is intercepted)."""
        a = self.args
        return ORIGINALS[self.kind](*a[: self.first], lhs, rhs, *a[self.first + 2 :], **self.kwargs)


@dataclasses.dataclass(eq=False)  # sessions are found by identity
class _Session:
    on_op: Callable[[Op], Any] | None
    on_module: Callable[[nn.Module, tuple, Any], None] | None
    root: tuple  # scope path that op keys are relative to
    isolated: bool  # while this session is open, the sessions below it see nothing
    stack: list = dataclasses.field(default_factory=list)
    counters: dict = dataclasses.field(default_factory=dict)
    busy: bool = False


_local = threading.local()
_lock = threading.Lock()
_depth = 0  # sessions open in all threads; attributes are patched while > 0


def _session() -> _Session | None:
    sessions = getattr(_local, "sessions", None)
    return sessions[-1] if sessions else None


def _path(parts) -> str:
    return "/".join(str(p) for p in parts)


def _handler(kind: str) -> Callable[..., Any]:
    original = ORIGINALS[kind]

    @functools.wraps(original)
    def intercepted(*args, **kwargs):
        s = _session()
        if s is None or s.busy or s.on_op is None or not s.stack:
            return original(*args, **kwargs)
        first = 0
        if kind == "einsum":
            if len(args) != 3 or not isinstance(args[0], str):
                return original(*args, **kwargs)  # pooling-style n-ary einsums: not a layer
            first = 1
        module = s.stack[-1]
        full = tuple(module.scope.path)
        n = s.counters.get((full, kind), 0)
        s.counters[(full, kind)] = n + 1
        rel = full[len(s.root) :] if full[: len(s.root)] == s.root else full
        op = Op(
            module=module,
            path=_path(full),
            key=f"{_path(rel)}:{kind}{n}",
            name=f"{_path(full)}:{kind}{n}",
            kind=kind,
            args=args,
            kwargs=kwargs,
            first=first,
        )
        s.busy = True  # the handler's own ops run unintercepted
        try:
            return s.on_op(op)
        finally:
            s.busy = False

    return intercepted


_HANDLERS = {kind: _handler(kind) for kind in ORIGINALS}


def _patch(on: bool) -> None:
    global _depth
    with _lock:
        _depth += 1 if on else -1
        if _depth == (1 if on else 0):
            table = _HANDLERS if on else ORIGINALS
            for mod, attr, kind in _TARGETS:
                setattr(mod, attr, table[kind])


def _track(session: _Session, next_fun, args, kwargs, context):
    sessions = getattr(_local, "sessions", [])
    index = next((i for i, s in enumerate(sessions) if s is session), len(sessions))
    above = sessions[index + 1 :]
    if session.busy or any(s.isolated for s in above):
        return next_fun(*args, **kwargs)
    session.stack.append(context.module)
    try:
        out = next_fun(*args, **kwargs)
    finally:
        session.stack.pop()
    if session.on_module is not None and context.method_name == "__call__":
        session.on_module(context.module, args, out)
    return out


@contextlib.contextmanager
def intercept(
    on_op: Callable[[Op], Any] | None = None,
    *,
    on_module: Callable[[nn.Module, tuple, Any], None] | None = None,
    root: nn.Module | None = None,
    isolated: bool = False,
) -> Iterator[None]:
    """Routes the layer ops and module calls of Flax code run inside the context.

    Args:
      on_op: called with an :class:`Op` for every conv, ``dot_general``, two-operand
        ``einsum``, ``dot`` and ``matmul`` that a Flax module runs; its return value
        is the op's result (``op.call(*op.operands)`` runs the op unchanged).
      on_module: called as ``on_module(module, args, output)`` after each module's
        ``__call__`` returns.
      root: the module whose call is already running (ops run directly in it belong
        to it); op keys are relative to its path.
      isolated: while open, the enclosing contexts of this thread see no module calls
        (for a throwaway trace such as :func:`find_layers`).

    Yields:
      None. Only the current thread is intercepted; ops go to the innermost context,
      module calls to every open one.

    Example:
      >>> with intercept(lambda op: print(op.name) or op.call(*op.operands)):
      ...     model.apply(variables, x)
    """
    path = tuple(root.scope.path) if root is not None and root.scope is not None else ()
    session = _Session(on_op, on_module, path, isolated, stack=[] if root is None else [root])
    _local.sessions = [*getattr(_local, "sessions", []), session]
    _patch(True)
    try:
        with nn.intercept_methods(functools.partial(_track, session)):
            yield
    finally:
        _patch(False)
        _local.sessions = _local.sessions[:-1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layer:
    """An intercepted op of a traced function (see :func:`find_layers`)."""

    key: str  # "path:kindN", the path relative to the traced model
    path: str  # "/"-joined module path
    kind: str  # "conv", "dot_general", "einsum", "dot" or "matmul"
    operands: tuple[str, str]  # each "activation", "weight" or "constant"
    sizes: tuple[int, int]  # elements of (lhs, rhs)
    macs: int  # multiply-accumulates (0 unless find_layers was asked for them)


def _sub_jaxprs(eqn) -> list:
    """The jaxprs inside an equation's parameters (pjit, custom_jvp, remat, scan, cond)."""
    found = []
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jax.extend.core.Jaxpr):
                found.append(v)
    return found


def _flow(jaxpr, flags: list[int], marks: dict, times: int = 1, macs: list | None = None) -> None:
    """Propagates data-flow bits; records marked operands' bits and (optionally) MACs."""
    env = dict(zip(jaxpr.invars, flags, strict=True))
    get = lambda v: env.get(v, 0) if isinstance(v, jax.extend.core.Var) else 0
    for eqn in jaxpr.eqns:
        ins = [get(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "optimization_barrier":
            for m in _MARK_RE.finditer(str(eqn.source_info.name_stack)):
                marks[(int(m.group(1)), int(m.group(2)))] = ins[0]
        if macs is not None and name == "conv_general_dilated":
            out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
            per_output = rhs.shape[spec[1]] * math.prod(rhs.shape[d] for d in spec[2:])
            macs.append(math.prod(out.shape) * per_output * times)
        elif macs is not None and name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            k = math.prod(lhs.shape[d] for d in contract)
            macs.append(math.prod(eqn.outvars[0].aval.shape) * k * times)
        out = functools.reduce(lambda a, b: a | b, ins, 0)
        for sub in _sub_jaxprs(eqn):
            if len(sub.invars) == len(ins):
                sub_flags = ins
            elif len(sub.invars) == len(ins) - 1:  # cond: the branch index comes first
                sub_flags = ins[1:]
            else:
                sub_flags = [out] * len(sub.invars)
            length = eqn.params.get("length", 1) if name == "scan" else 1
            _flow(sub, sub_flags, marks, times * length, macs)
        for v in eqn.outvars:
            env[v] = out


def _macs(op: Op, lhs, rhs) -> int:
    """Multiply-accumulates of one op, read from its own (abstract) jaxpr."""
    closed = jax.make_jaxpr(op.call)(lhs, rhs)
    counts: list = []
    _flow(closed.jaxpr, [0] * len(closed.jaxpr.invars), {}, 1, counts)
    return sum(counts)


def _role(bits: int) -> str:
    if bits & _INPUT:
        return ACTIVATION
    return WEIGHT if bits & _STATE else CONSTANT


def find_layers(
    fn: Callable[[Any, Any], Any], state: Any, inputs: Any, *, macs: bool = False
) -> tuple[Layer, ...]:
    """The layers ``fn(state, inputs)`` runs, each operand classified by where it comes from.

    Nothing is compiled or run: ``fn`` is traced with ``jax.make_jaxpr``.

    Args:
      fn: e.g. ``lambda v, x: model.apply(v, x)`` or ``lambda key, x: model.init(key, x)``.
      state: the variables (or init keys): operands computed only from these are weights.
      inputs: the model inputs: operands computed from these are activations.
      macs: also count each layer's multiply-accumulates.

    Returns:
      The layers in call order.

    Example:
      >>> layers = find_layers(lambda v, x: model.apply(v, x), variables, x)
      >>> layers[-1].key, layers[-1].operands
      ('head:dot_general0', ('activation', 'weight'))
    """
    found: list[tuple[Op, int]] = []

    def record(op: Op):
        lhs, rhs = op.operands
        marked = []
        for i, t in enumerate((lhs, rhs)):
            with jax.named_scope(f"{_MARK}{len(found)}_{i}"):
                marked.append(jax.lax.optimization_barrier(t))
        found.append((op, _macs(op, lhs, rhs) if macs else 0))
        return op.call(*marked)

    n_state = len(jax.tree.leaves(state))
    with intercept(record, isolated=True):
        closed = jax.make_jaxpr(fn)(state, inputs)
    marks: dict = {}
    flags = [_STATE] * n_state + [_INPUT] * (len(closed.jaxpr.invars) - n_state)
    _flow(closed.jaxpr, flags, marks)
    layers = []
    for k, (op, count) in enumerate(found):
        lhs, rhs = op.operands
        layers.append(
            Layer(
                key=op.key,
                path=op.path,
                kind=op.kind,
                operands=(_role(marks.get((k, 0), 0)), _role(marks.get((k, 1), 0))),
                sizes=(math.prod(jnp.shape(lhs)), math.prod(jnp.shape(rhs))),
                macs=count,
            )
        )
    return tuple(layers)
