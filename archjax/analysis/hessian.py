"""Hessian-vector products and Hutchinson traces over parameter pytrees.

Everything here works on a loss ``loss_fn(params, batch) -> scalar`` and a
parameter pytree, never on a model: curvature of any Flax (or plain JAX)
network. The Hessian is never formed; each product ``H v`` is one
forward-over-reverse pass (``jax.jvp`` of ``jax.grad``, Pearlmutter 1994,
"Fast exact multiplication by the Hessian"), which costs a small constant
times one gradient.

Two choices appear in every function:

* ``subset`` restricts the Hessian to some parameters (the diagonal block
  ``H_SS``): ``None`` (all), a regex searched in each leaf's ``"/"``-joined
  path (``"stage1/block0/conv1/kernel"``), or a predicate on that path. Only the
  selected leaves are differentiated.
* ``stacked``: ``False`` means ``data`` is one batch (a mini-batch estimate);
  ``True`` means every leaf of ``data`` has a leading axis of batches and the
  Hessian is that of the mean loss over them (the full-data estimate): per-batch
  products are averaged, so only one batch of activations is alive at a time.

Each Hessian-vector product on one batch is one compiled program, cached per
``(loss_fn, subset, shapes)`` and shared by every algorithm here; the loops over
probes, batches and Lanczos steps run in Python around it (as PyHessian does).
Putting those loops inside the program (``lax.scan`` / ``fori_loop``) was tried
first: on XLA:CPU the loop body ran 2-3x slower than the same product outside a
loop (resnet8, 16 px) and compiled several times longer.

Data parallelism needs no code: call with a batch sharded on the ``data`` mesh
axis (``archjax.parallel.shard_batch``, or :func:`shard_batches` for stacked
data) and replicated parameters. Under ``jax.jit`` the mean loss over the global
batch already sums across devices (XLA inserts the all-reduce, the ``psum``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from archjax.parallel import DATA_AXIS
from archjax.tree_paths import check_pattern, match_path

Params = Any
Batch = Any
LossFn = Callable[[Params, Batch], jax.Array]
Selector = str | Callable[[str], bool] | None


def classifier_loss(model: nn.Module, variables: dict[str, Any], *, train: bool = False) -> LossFn:
    """Mean cross-entropy of a classifier as a function of its parameters.

    Args:
      model: a Flax module called as ``model(images, train=...)`` returning logits.
      variables: its variables; every collection but ``params`` (e.g.
        ``batch_stats``) is held fixed.
      train: run the model in training mode (BatchNorm uses batch statistics,
        whose updates are discarded). HAWQ uses the eval mode (default).

    Returns:
      ``loss_fn(params, batch)`` for batches ``{"image", "label"[, "mask"]}``.
      Build it once and reuse it: the functions of this module compile once per
      ``loss_fn`` object.

    Example:
      >>> loss_fn = classifier_loss(model, variables)
      >>> est = hutchinson_trace(loss_fn, variables["params"], batch, key=key)
    """
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params: Params, batch: Batch) -> jax.Array:
        inputs = {**rest, "params": params}
        if train:
            logits, _ = model.apply(inputs, batch["image"], train=True, mutable=list(rest))
        else:
            logits = model.apply(inputs, batch["image"], train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), batch["label"]
        )
        if "mask" not in batch:
            return jnp.mean(losses)
        return jnp.sum(losses * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)

    return loss_fn


def param_paths(params: Params) -> list[str]:
    """The ``"/"``-joined path of every leaf of ``params``, in leaf order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [jax.tree_util.keystr(keypath, simple=True, separator="/") for keypath, _ in flat]


def module_path(path: str) -> str:
    """The layer a parameter belongs to: its path without the leaf name.

    ``"stage1/block0/conv1/kernel" -> "stage1/block0/conv1"``, the Flax module
    path that quantization rules match.
    """
    return path.rsplit("/", 1)[0] if "/" in path else path


def _predicate(subset: Selector) -> Callable[[str], bool]:
    if subset is None:
        return lambda _: True
    if isinstance(subset, str):
        check_pattern(subset, field="subset")
        return functools.partial(match_path, subset)
    if callable(subset):
        return subset
    raise ValueError(
        f"subset must be None, a regex string or a predicate on paths, got {subset!r}."
    )


class _Split:
    """Params split into the differentiated leaves (``subset``) and the fixed rest."""

    def __init__(self, params: Params, subset: Selector):
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        self.leaves = [leaf for _, leaf in flat]
        self.paths = param_paths(params)
        pred = _predicate(subset)
        self.index = [i for i, p in enumerate(self.paths) if pred(p)]
        if not self.index:
            raise ValueError(
                f"subset={subset!r} selects no parameter; the paths are: {', '.join(self.paths)}."
            )

    @property
    def selected(self) -> list[jax.Array]:
        return [self.leaves[i] for i in self.index]

    @property
    def selected_paths(self) -> list[str]:
        return [self.paths[i] for i in self.index]

    def merge(self, selected: Sequence[jax.Array]) -> Params:
        leaves = list(self.leaves)
        for i, x in zip(self.index, selected, strict=True):
            leaves[i] = x
        return self.treedef.unflatten(leaves)

    def full(self, selected: Sequence[jax.Array]) -> Params:
        """A params-shaped tree: ``selected`` where chosen, zeros elsewhere."""
        leaves = [jnp.zeros_like(x) for x in self.leaves]
        for i, x in zip(self.index, selected, strict=True):
            leaves[i] = x
        return self.treedef.unflatten(leaves)


@functools.partial(jax.jit, static_argnames=("loss_fn", "subset"))
def _batch_hvp(loss_fn, params, batch, vector, *, subset):
    """``H_SS v`` on one batch, on lists of the selected leaves."""
    split = _Split(params, subset)
    grad = jax.grad(lambda sel: loss_fn(split.merge(sel), batch))
    return jax.jvp(grad, (split.selected,), (vector,))[1]


@jax.jit
def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def _scale(a, factor):
    return jax.tree.map(lambda x: x * factor, a)


@jax.jit
def _ravel(leaves: list[jax.Array]) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in leaves])


@functools.partial(jax.jit, static_argnames=("shapes",))
def _unravel(flat: jax.Array, *, shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    sizes = [int(np.prod(s)) for s in shapes]
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    return [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]


def _take(x: Any, b: int) -> Any:
    """``x[b]``, sharded like one batch, so that it hits the same compiled HVP as one."""
    y = x[b]
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.spec and sharding.spec[0] is None:
        y = jax.device_put(y, NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:])))
    return y


class _Operator:
    """``v -> H_SS v`` on lists of the selected leaves, averaged over stacked batches.

    One compiled HVP per batch shape, so a mini-batch and a stack of such batches
    share it, and so do all the algorithms of this package.
    """

    def __init__(self, loss_fn: LossFn, params: Params, data: Batch, subset: Selector, stacked):
        self.split = _Split(params, subset)
        self.loss_fn, self.params, self.subset = loss_fn, params, subset
        if stacked:
            n = jax.tree.leaves(data)[0].shape[0]
            self.batches = [jax.tree.map(lambda x, b=b: _take(x, b), data) for b in range(n)]
        else:
            self.batches = [data]
        self.shapes = tuple(tuple(x.shape) for x in self.split.selected)
        self.n = sum(int(np.prod(s)) for s in self.shapes)
        self.dtype = self.split.selected[0].dtype

    def __call__(self, v: list[jax.Array]) -> list[jax.Array]:
        total = None
        for batch in self.batches:
            hv = _batch_hvp(self.loss_fn, self.params, batch, v, subset=self.subset)
            total = hv if total is None else _add(total, hv)
        return total if len(self.batches) == 1 else _scale(total, 1.0 / len(self.batches))

    def flat(self, x: jax.Array) -> jax.Array:
        """The product on flat vectors (the selected leaves raveled in leaf order)."""
        # Flat vectors live where the parameters do: a vector fresh from the RNG (one
        # device) and one computed from HVPs (all devices) would compile two HVPs.
        sharding = getattr(self.split.selected[0], "sharding", None)
        if sharding is not None and sharding.is_fully_replicated:
            x = jax.device_put(x, sharding)
        return _ravel(self(self.unravel(x)))

    def unravel(self, x: jax.Array) -> list[jax.Array]:
        return _unravel(x, shapes=self.shapes)


def hvp(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    vector: Params,
    *,
    subset: Selector = None,
    stacked: bool = False,
) -> Params:
    """Hessian-vector product ``H v`` of ``loss_fn`` at ``params`` (forward-over-reverse).

    Pearlmutter (1994): ``H v = d/dt grad L(params + t v)`` at ``t = 0``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the point where the Hessian is taken.
      data: one batch, or stacked batches if ``stacked`` (see the module doc).
      vector: a pytree shaped like ``params``.
      subset: restricts to the diagonal block of the selected leaves: entries of
        ``vector`` outside it are ignored and the result is zero there.
      stacked: average over the leading batch axis of ``data`` (full-data Hessian).

    Returns:
      ``H v``, shaped like ``params``.

    Example:
      >>> hv = hvp(loss_fn, params, batch, v, subset=r"^Dense_1/")
    """
    op = _Operator(loss_fn, params, data, subset, stacked)
    leaves = jax.tree.leaves(vector)
    return op.split.full(op([leaves[i] for i in op.split.index]))


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """A Hutchinson estimate of the trace, in total and per layer.

    Attributes:
      trace: the estimate of ``tr(H_SS)`` (mean over probes).
      stderr: its standard error, ``std(samples, ddof=1) / sqrt(num_probes)``.
      per_layer: layer path -> estimate of the trace of that layer's diagonal block.
      per_layer_stderr: layer path -> standard error of that estimate.
      num_params: layer path -> number of parameters in the block.
      samples: ``[num_probes, num_layers]`` per-probe values ``v_l . (H v)_l``,
        columns in the order of ``per_layer``; rows sum to the per-probe total.
    """

    trace: float
    stderr: float
    per_layer: dict[str, float]
    per_layer_stderr: dict[str, float]
    num_params: dict[str, int]
    samples: np.ndarray


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _probe(key, *, n, dtype):
    """A flat Rademacher probe (one random-number program whatever the number of leaves)."""
    return jax.random.rademacher(key, (n,), dtype=dtype)


@functools.partial(jax.jit, static_argnames=("num_groups",))
def _group_dots(v, hv, segments, *, num_groups):
    """Per-group sums of ``v * hv`` (``segments`` gives each flat entry's group)."""
    return jax.ops.segment_sum(v * hv, segments, num_segments=num_groups)


def hutchinson_trace(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: jax.Array,
    num_probes: int = 100,
    subset: Selector = None,
    stacked: bool = False,
    group: Callable[[str], str] = module_path,
) -> TraceEstimate:
    """Hutchinson's estimate of the Hessian trace, per layer and in total.

    ``tr(H) = E[v^T H v]`` for Rademacher ``v`` (Hutchinson 1989; used for
    per-layer sensitivities by HAWQ-V2, Dong et al. 2020, and PyHessian, Yao et
    al. 2020). One HVP per probe gives every layer's block trace at once, because
    ``E[v_l^T (H v)_l] = tr(H_ll)``: the cross terms have mean zero. Per-layer
    estimates from the same probes add up exactly to the total.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the point where the Hessian is taken.
      data: one batch, or stacked batches if ``stacked``.
      key: PRNG key of the probes.
      num_probes: number of Rademacher probes (>= 2, for a standard error).
      subset: which leaves to include (see the module doc).
      stacked: full-data estimate over the leading batch axis of ``data``.
      group: maps a leaf path to its layer name (default: the module path).

    Returns:
      A :class:`TraceEstimate`.

    Example:
      >>> est = hutchinson_trace(loss_fn, params, batch, key=jax.random.key(0))
      >>> print(f"{est.trace:.3f} +- {est.stderr:.3f}", est.per_layer)
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 (for a standard error), got {num_probes}.")
    split = _Split(params, subset)
    layers: list[str] = []
    groups = []
    counts: dict[str, int] = {}
    for path, leaf in zip(split.selected_paths, split.selected, strict=True):
        name = group(path)
        if name not in layers:
            layers.append(name)
        groups.append(layers.index(name))
        counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
    op = _Operator(loss_fn, params, data, subset, stacked)
    segments = jnp.asarray(np.repeat(groups, [int(np.prod(s)) for s in op.shapes]), dtype=jnp.int32)
    rows = []
    for k in jax.random.split(key, num_probes):
        v = _probe(k, n=op.n, dtype=op.dtype)
        rows.append(_group_dots(v, op.flat(v), segments, num_groups=len(layers)))
    samples = np.asarray(jnp.stack(rows), dtype=np.float64)
    totals = samples.sum(axis=1)
    se = samples.std(axis=0, ddof=1) / np.sqrt(num_probes)
    return TraceEstimate(
        trace=float(totals.mean()),
        stderr=float(totals.std(ddof=1) / np.sqrt(num_probes)),
        per_layer={name: float(m) for name, m in zip(layers, samples.mean(axis=0), strict=True)},
        per_layer_stderr={name: float(s) for name, s in zip(layers, se, strict=True)},
        num_params=counts,
        samples=samples,
    )


def stack_batches(batches: Sequence[Batch], mesh: Mesh | None = None) -> Batch:
    """Stacks equal-sized batches on a new leading axis for ``stacked=True``.

    Args:
      batches: batches with identical shapes (e.g. from ``archjax.data.train_iterator``).
      mesh: if given, the result is sharded with the batch axis (axis 1) split
        over the mesh's ``data`` axis, for the data-parallel full-data estimate.

    Returns:
      One pytree whose leaves are ``[num_batches, batch, ...]``.
    """
    if not batches:
        raise ValueError("stack_batches needs at least one batch.")
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)
    if mesh is None:
        return stacked
    return jax.device_put(stacked, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS)))
