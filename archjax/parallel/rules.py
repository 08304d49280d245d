"""Logical-axis rules: which parameter dimension is split over which mesh axis.

Two tables, kept apart as in qwix (*which* leaves a rule matches is separate from
*how* they are split):

1. ``param_rules``: a regular expression over a leaf's path in the state tree
   (``params/block0/attn/qkv/kernel``) -> one *logical* axis name per array
   dimension, e.g. ``("embed", "heads")``. A rule whose length differs from the
   leaf's rank is skipped, so ``kernel$`` with four names matches only conv kernels.
2. ``logical_to_mesh``: logical name -> mesh axis (``"model"``), or ``None``.

The path regex is searched in the *whole* state path, so the optimizer moments
(``opt_state/0/mu/block0/attn/qkv/kernel``) and any EMA copy of the parameters
get exactly the same sharding as the parameters without a rule of their own.
Models need no annotation (``nn.with_logical_partitioning`` would have to be
written into every model file, and optax states would not carry it).

On top of the table, FSDP (Rajbhandari et al., "ZeRO", 2020) splits the largest
remaining dimension of every leaf with at least ``fsdp_min_size`` elements over
the ``fsdp`` axis, as big_vision's ``fsdp`` strategy does. A mesh axis that is
absent or of size 1, or that does not divide the dimension, leaves it whole.

On meshes with ``fsdp`` and ``model`` both > 1 the train and eval steps call
:func:`gather_fsdp`, which writes out FSDP's all-gather: the parameters are used
in their layout without ``fsdp`` while they stay stored split
(docs/distributed.md, "Sharded steps gather the FSDP parameters").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from archjax.parallel.mesh import BATCH_AXES, FSDP_AXIS, MODEL_AXIS
from archjax.tree_paths import check_pattern, first_match

LogicalAxes = tuple[str | None, ...]
MeshAxes = str | tuple[str, ...] | None

# Megatron-style tensor parallelism (Shoeybi et al. 2019): the first matmul of
# attention and of every MLP is split by output column ("heads", "mlp"), the
# second by input row, so each pair needs one all-reduce. ViT names its layers
# attn/qkv, attn/proj, mlp/fc1, mlp/fc2; MLP-Mixer mlp_tokens/* and mlp_channels/*.
# Convolutions (ResNets, patch embeddings) split their output channels.
DEFAULT_PARAM_RULES: tuple[tuple[str, LogicalAxes], ...] = (
    (r"attn/qkv/kernel$", ("embed", "heads")),
    (r"attn/qkv/bias$", ("heads",)),
    (r"attn/proj/kernel$", ("heads", "embed")),
    (r"mlp\w*/fc1/kernel$", ("embed", "mlp")),
    (r"mlp\w*/fc1/bias$", ("mlp",)),
    (r"mlp\w*/fc2/kernel$", ("mlp", "embed")),
    (r"kernel$", (None, None, "conv_in", "conv_out")),
)

DEFAULT_LOGICAL_TO_MESH: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", BATCH_AXES),
    ("heads", MODEL_AXIS),
    ("mlp", MODEL_AXIS),
    ("conv_out", MODEL_AXIS),
    ("embed", None),
    ("conv_in", None),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardingRules:
    """How a state tree is laid out on a ``data x fsdp x model`` mesh.

    Attributes:
      param_rules: (path regex, logical axes) pairs; the first that matches a
        leaf's path (and has one name per dimension) wins.
      logical_to_mesh: (logical name, mesh axis or tuple of axes or None) pairs.
      fsdp_min_size: leaves with fewer elements stay whole on the ``fsdp`` axis
        (biases and norms are not worth the gather).
    """

    # (regex searched in "params/block0/attn/qkv/kernel", logical name per dim).
    param_rules: tuple[tuple[str, LogicalAxes], ...] = DEFAULT_PARAM_RULES
    # Logical name -> mesh axis; names not listed are never split.
    logical_to_mesh: tuple[tuple[str, MeshAxes], ...] = DEFAULT_LOGICAL_TO_MESH
    # Smallest leaf (in elements) that FSDP splits.
    fsdp_min_size: int = 2**10

    def __post_init__(self):
        for pattern, _ in self.param_rules:
            check_pattern(pattern, field="param_rules")
        if self.fsdp_min_size < 0:
            raise ValueError(f"fsdp_min_size must be >= 0, got {self.fsdp_min_size}.")


def path_name(path: Sequence[Any]) -> str:
    """A tree path as the string the rules match: ``params/block0/attn/qkv/kernel``."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _mesh_axes(name: str | None, mesh: Mesh, rules: ShardingRules) -> tuple[str, ...]:
    """The mesh axes (of size > 1, present in ``mesh``) that a logical name maps to."""
    if name is None:
        return ()
    target = dict(rules.logical_to_mesh).get(name)
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def logical_axes(path: str, ndim: int, rules: ShardingRules) -> LogicalAxes:
    """The logical axes of the leaf at ``path`` (all ``None`` if no rule matches)."""
    fitting = (rule for rule in rules.param_rules if len(rule[1]) == ndim)
    rule = first_match(fitting, path, pattern=lambda rule: rule[0])
    return (None,) * ndim if rule is None else tuple(rule[1])


def partition_spec(
    path: str, shape: Sequence[int], mesh: Mesh, rules: ShardingRules | None = None
) -> PartitionSpec:
    """The ``PartitionSpec`` of one leaf: rule table first, then FSDP.

    Args:
      path: the leaf's '/'-joined tree path (see :func:`path_name`).
      shape: the leaf's shape.
      mesh: the mesh; axes it lacks (or of size 1) are never used.
      rules: the tables; default :class:`ShardingRules`.

    Returns:
      A spec with one entry per dimension (trailing ``None`` kept).

    Example:
      >>> partition_spec("params/block0/mlp/fc1/kernel", (32, 128), mesh)
      PartitionSpec(None, 'model')        # on a mesh with model=2
    """
    rules = rules or ShardingRules()
    spec: list[Any] = []
    used: set[str] = set()
    for dim, name in zip(shape, logical_axes(path, len(shape), rules), strict=True):
        axes = tuple(a for a in _mesh_axes(name, mesh, rules) if a not in used)
        size = 1
        for a in axes:
            size *= mesh.shape[a]
        if axes and dim % size == 0:
            spec.append(axes[0] if len(axes) == 1 else axes)
            used.update(axes)
        else:
            spec.append(None)
    n_fsdp = mesh.shape[FSDP_AXIS] if FSDP_AXIS in mesh.axis_names else 1
    numel = 1
    for d in shape:
        numel *= d
    if n_fsdp > 1 and FSDP_AXIS not in used and numel >= max(rules.fsdp_min_size, 1):
        # The largest free dimension that the fsdp axis divides (big_vision's choice).
        free = [i for i, d in enumerate(shape) if spec[i] is None and d % n_fsdp == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = FSDP_AXIS
    return PartitionSpec(*spec)


def tree_partition_specs(tree: Any, mesh: Mesh, rules: ShardingRules | None = None) -> Any:
    """:func:`partition_spec` of every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: partition_spec(path_name(p), x.shape, mesh, rules), tree
    )


def tree_shardings(tree: Any, mesh: Mesh, rules: ShardingRules | None = None) -> Any:
    """``NamedSharding`` of every leaf of ``tree`` on ``mesh`` under ``rules``.

    Args:
      tree: a state pytree, concrete or abstract (``jax.eval_shape``).
      mesh: from :func:`archjax.parallel.make_mesh`.
      rules: the tables; default :class:`ShardingRules`.

    Returns:
      A tree of ``NamedSharding`` with ``tree``'s structure. On a 1-D ``data``
      mesh every leaf is replicated (plain data parallelism).

    Example:
      >>> mesh = make_mesh(shape={"fsdp": -1})
      >>> shardings = tree_shardings(jax.eval_shape(init, key), mesh)
      >>> state = jax.jit(init, out_shardings=shardings)(key)
    """
    specs = tree_partition_specs(tree, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def without_fsdp(spec: PartitionSpec) -> PartitionSpec:
    """``spec`` with the ``fsdp`` mesh axis removed from every entry (the gathered layout)."""
    entries = []
    for entry in spec:
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept = tuple(a for a in axes if a != FSDP_AXIS)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return PartitionSpec(*entries)


def gather_fsdp(tree: Any, mesh: Mesh, rules: ShardingRules | None = None) -> Any:
    """Inside ``jax.jit``: every leaf constrained to its rule layout without ``fsdp``.

    This is FSDP's all-gather written out as ``jax.lax.with_sharding_constraint``:
    the leaves stay *stored* split on ``fsdp`` (the step's in/out shardings), and
    the computation that follows sees them gathered over ``fsdp`` but still split
    on ``model``. Leaving the gather to XLA's SPMD partitioner gave wrong
    convolutions on meshes with ``data``, ``fsdp`` and ``model`` all > 1
    (jax/jaxlib 0.10.2, XLA:CPU; docs/distributed.md has the plain-JAX repro).

    Args:
      tree: the leaves to gather, with the paths the rules match (pass
        ``{"params": state.params}`` for a train state's parameters).
      mesh: the step's mesh; without an ``fsdp`` axis > 1, ``tree`` is returned as is.
      rules: the tables the tree was laid out with; default :class:`ShardingRules`.

    Returns:
      ``tree`` with each leaf under its gathered sharding constraint.

    Example:
      >>> params = gather_fsdp({"params": state.params}, mesh, rules)["params"]
    """
    if mesh.shape.get(FSDP_AXIS, 1) == 1:
        return tree
    specs = tree_partition_specs(tree, mesh, rules)
    return jax.tree.map(
        lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, without_fsdp(s))),
        tree,
        specs,
    )


def logical_sharding(
    axes: LogicalAxes, mesh: Mesh, rules: ShardingRules | None = None
) -> NamedSharding:
    """The sharding of an activation whose dimensions have logical ``axes``.

    Example:
      >>> logical_sharding(("batch", None, None, None), mesh)   # images
      NamedSharding(mesh, PartitionSpec(('data', 'fsdp'), None, None, None))
    """
    rules = rules or ShardingRules()
    spec = []
    for name in axes:
        mesh_axes = _mesh_axes(name, mesh, rules)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return NamedSharding(mesh, PartitionSpec(*spec))
