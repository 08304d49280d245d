"""Hessian-aware mixed precision: per-layer sensitivities and a budgeted allocation.

HAWQ-V2 (Dong et al., 2020) scores quantizing layer ``l`` with candidate ``c`` by
``Omega_lc = tr(H_l) / n_l * ||Q_c(W_l) - W_l||^2`` (the average Hessian trace of
the layer's weights times the squared quantization perturbation) and picks one
candidate per layer that minimizes ``sum_l Omega_l`` under a budget on model size
(``bits x params``) or BOPs. FLIQS (Dotzel et al., 2024) puts integer and
floating-point formats in the same search space; here any object with ``.bits``
and a quantize-dequantize function is a candidate, so both plug in.

The allocation is a multiple-choice knapsack. :func:`allocate` solves it exactly
with an integer program (``scipy.optimize.milp``, as HAWQ-V3) or a dynamic
program over the Pareto frontier of (cost, sensitivity), with a greedy fallback
for large models. Its output names each layer by an anchored module-path regex,
and :func:`to_quant_rules` turns it into ``archjax.quant.QuantRule`` objects.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from archjax.analysis.hessian import TraceEstimate, module_path, param_paths
from archjax.quant.calibration import calibrate_tensor
from archjax.quant.formats import IntFormat
from archjax.quant.numerics import fake_quant
from archjax.quant.rules import QuantRule
from archjax.tree_paths import check_pattern, match_path

METHODS = ("auto", "milp", "dp", "greedy")
# Above this many layers "auto" uses the greedy allocation instead of the integer program.
AUTO_EXACT_MAX_LAYERS = 2000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """One way to store a layer's weights.

    Example:
      >>> Candidate(name="int4", bits=4, quantize=my_fake_quant)
    """

    # Label used in tables and plans, e.g. "int4" or "fp8_e4m3".
    name: str
    # Storage bits per weight element (the size cost is bits x params).
    bits: int
    # Quantize-dequantize of a weight tensor: same shape and dtype, values on the grid.
    quantize: Callable[[jax.Array], jax.Array] = dataclasses.field(compare=False)
    # The archjax.quant Format this stands for, if any (needed by to_quant_rules).
    format: Any = None

    def __post_init__(self):
        if not isinstance(self.bits, int | np.integer) or self.bits < 1:
            raise ValueError(f"Candidate.bits must be a positive integer, got {self.bits!r}.")


def uniform_int(bits: int) -> Candidate:
    """A symmetric per-output-channel absmax integer candidate (``bits >= 2``).

    Quantizes like ``as_candidate(IntFormat(bits=bits))`` but carries no format, so it is
    for sensitivity studies, not :func:`to_quant_rules`; any ``archjax.quant`` format is a
    candidate through :func:`as_candidate`.

    Example:
      >>> candidates = [uniform_int(b) for b in (2, 4, 8)]
    """
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"uniform_int bits must be an integer in [2, 16], got {bits!r}.")
    return Candidate(name=f"int{bits}", bits=bits, quantize=_format_quantizer(IntFormat(bits=bits)))


def _format_quantizer(fmt: Any) -> Callable[[jax.Array], jax.Array]:
    """Quantize-dequantize with an archjax.quant Format and absmax scales.

    The format's ``weight_granularity`` (``PerChannel(-1)``, the default of ``QuantRule``,
    or blocks along the input axis for NF4 / MX); 1-D weights per tensor.
    """

    def quantize(w: jax.Array) -> jax.Array:
        if w.ndim < 2:
            return fake_quant(w, fmt, calibrate_tensor(w, fmt))
        gran = fmt.weight_granularity
        return fake_quant(w, fmt, calibrate_tensor(w, fmt, granularity=gran), granularity=gran)

    return quantize


def as_candidate(obj: Any) -> Candidate:
    """Turns ``obj`` into a :class:`Candidate`.

    Accepted: a ``Candidate``; a callable (quantize-dequantize) with a ``.bits``
    attribute; an ``archjax.quant`` format (``IntFormat``, ``FloatFormat``, ...:
    anything with ``.bits``), quantized per output channel with absmax scales.

    Returns:
      The candidate; ``ValueError`` if ``obj`` has no ``.bits``.
    """
    if isinstance(obj, Candidate):
        return obj
    bits = getattr(obj, "bits", None)
    if bits is None:
        raise ValueError(
            f"A candidate needs a .bits attribute (a Candidate, a format, or a callable with "
            f".bits), got {obj!r}."
        )
    name = str(getattr(obj, "name", None) or getattr(obj, "__name__", f"{bits}bit"))
    if callable(obj):
        return Candidate(name=name, bits=int(bits), quantize=obj)
    return Candidate(name=name, bits=int(bits), quantize=_format_quantizer(obj), format=obj)


@dataclasses.dataclass(frozen=True)
class SensitivityTable:
    """HAWQ-V2 sensitivities of every (layer, candidate) pair.

    Attributes:
      layers: module paths, e.g. ``"stage1/block0/conv1"``.
      candidates: the candidates (columns).
      sensitivity: ``[num_layers, num_candidates]`` ``tr(H_l)/n_l * ||Q_c(W_l) - W_l||^2``.
      num_params: ``[num_layers]`` quantized weights per layer.
    """

    layers: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    sensitivity: np.ndarray
    num_params: np.ndarray

    def size_bits(self) -> np.ndarray:
        """``[num_layers, num_candidates]`` weight storage in bits (bits x params)."""
        bits = np.asarray([c.bits for c in self.candidates], np.float64)
        return self.num_params[:, None].astype(np.float64) * bits[None, :]

    def bops(self, macs: Mapping[str, float], activation_bits: int = 8) -> np.ndarray:
        """``[num_layers, num_candidates]`` BOPs = MACs x weight bits x activation bits.

        The convention of HAWQ-V3 and the archjax cost model; ``macs`` maps each layer
        (e.g. from ``archjax.quant.cost.report``) to its multiply-accumulates.
        """
        missing = [name for name in self.layers if name not in macs]
        if missing:
            raise ValueError(f"macs has no entry for layers {missing}; it has {sorted(macs)}.")
        m = np.asarray([float(macs[name]) for name in self.layers])
        bits = np.asarray([c.bits for c in self.candidates], np.float64)
        return m[:, None] * bits[None, :] * float(activation_bits)


def sensitivities(
    params: Any,
    traces: TraceEstimate | Mapping[str, float],
    candidates: Sequence[Any],
    *,
    weight: str = r"(^|/)kernel$",
) -> SensitivityTable:
    """Per-layer, per-candidate HAWQ-V2 sensitivities ``tr(H_l) / n_l * ||Q(W_l) - W_l||^2``.

    Args:
      params: the trained parameters.
      traces: per-layer Hessian traces of the weights, e.g.
        ``hutchinson_trace(..., subset=weight)`` or a dict layer -> trace; a layer
        appears in the table iff it has a trace. HAWQ-V2 assumes a trained model,
        where the traces are positive; a negative (noisy, or away from a minimum)
        trace gives negative sensitivities, which favour fewer bits.
      candidates: see :func:`as_candidate` (Candidates, formats, callables with ``.bits``).
      weight: regex (searched in leaf paths) of the weights that get quantized;
        a layer's weights are the matching leaves under its module path.

    Returns:
      A :class:`SensitivityTable`.

    Example:
      >>> est = hutchinson_trace(loss_fn, params, batch, key=key, subset=r"kernel$")
      >>> table = sensitivities(params, est, [uniform_int(b) for b in (2, 4, 8)])
    """
    cands = tuple(as_candidate(c) for c in candidates)
    if not cands:
        raise ValueError("sensitivities needs at least one candidate.")
    per_layer = traces.per_layer if isinstance(traces, TraceEstimate) else dict(traces)
    check_pattern(weight, field="weight")
    weights: dict[str, list[jax.Array]] = {}
    for path, leaf in zip(param_paths(params), jax.tree.leaves(params), strict=True):
        if match_path(weight, path):
            weights.setdefault(module_path(path), []).append(leaf)
    missing = [name for name in per_layer if name not in weights]
    if missing:
        raise ValueError(
            f"Layers {missing} have a trace but no weight matching {weight!r}; "
            f"layers with weights: {sorted(weights)}."
        )
    layers = tuple(per_layer)
    counts = np.asarray([sum(w.size for w in weights[name]) for name in layers], np.int64)
    if isinstance(traces, TraceEstimate):
        wrong = [n for n, c in zip(layers, counts, strict=True) if traces.num_params[n] != c]
        if wrong:
            raise ValueError(
                f"The traces of {wrong} cover other parameters than the weights {weight!r}; "
                f"estimate them with hutchinson_trace(..., subset={weight!r})."
            )
    table = np.zeros((len(layers), len(cands)))
    for j, cand in enumerate(cands):
        # One compiled program per candidate: all layers' squared errors at once.
        errors = jax.jit(
            lambda ws, q=cand.quantize: [
                sum(jnp.sum((q(w) - w) ** 2) for w in group) for group in ws
            ]
        )([weights[name] for name in layers])
        for i, name in enumerate(layers):
            table[i, j] = per_layer[name] / counts[i] * float(errors[i])
    return SensitivityTable(layers, cands, table, counts)


@dataclasses.dataclass(frozen=True)
class LayerChoice:
    """The candidate chosen for one layer; ``pattern`` matches exactly that module path."""

    path: str
    candidate: Candidate
    sensitivity: float
    cost: float

    @property
    def pattern(self) -> str:
        return f"^{re.escape(self.path)}$"


@dataclasses.dataclass(frozen=True)
class MixedPrecisionPlan:
    """An allocation: one :class:`LayerChoice` per layer, its totals and how it was found."""

    choices: tuple[LayerChoice, ...]
    sensitivity: float
    cost: float
    budget: float
    method: str

    def __str__(self) -> str:
        width = max([5] + [len(c.path) for c in self.choices])
        lines = [f"{'layer':<{width}}  {'format':>12}  {'sensitivity':>12}  {'cost':>12}"]
        for c in self.choices:
            lines.append(
                f"{c.path:<{width}}  {c.candidate.name:>12}  {c.sensitivity:12.4e}  {c.cost:12.4g}"
            )
        lines.append(
            f"total sensitivity {self.sensitivity:.4e}, cost {self.cost:.6g} / budget "
            f"{self.budget:.6g} ({self.method})"
        )
        return "\n".join(lines)


def allocate(
    table: SensitivityTable,
    budget: float,
    *,
    cost: str | np.ndarray = "size",
    method: str = "auto",
) -> MixedPrecisionPlan:
    """One candidate per layer minimizing total sensitivity with total cost <= ``budget``.

    HAWQ-V2/V3's integer program (Dong et al., 2020; Yao et al., 2021): minimize
    ``sum_l Omega_{l, c_l}`` subject to ``sum_l cost_{l, c_l} <= budget``.

    Args:
      table: from :func:`sensitivities`.
      budget: the largest allowed total cost (e.g. bits of weights).
      cost: ``"size"`` (bits x params, :meth:`SensitivityTable.size_bits`) or a
        ``[num_layers, num_candidates]`` array such as :meth:`SensitivityTable.bops`.
      method: ``"milp"`` (exact, scipy's HiGHS), ``"dp"`` (exact, Pareto-frontier
        dynamic program), ``"greedy"`` (best sensitivity drop per unit cost, never
        over budget) or ``"auto"`` (``milp`` up to ``AUTO_EXACT_MAX_LAYERS`` layers).

    Returns:
      A :class:`MixedPrecisionPlan`; its cost never exceeds ``budget``.

    Example:
      >>> plan = allocate(table, budget=0.5 * table.size_bits()[:, -1].sum())
      >>> rules = to_quant_rules(plan)
    """
    if isinstance(cost, str):
        if cost != "size":
            raise ValueError(f"cost must be 'size' or a cost array, got {cost!r}.")
        costs = table.size_bits()
    else:
        costs = np.asarray(cost, np.float64)
        if costs.shape != table.sensitivity.shape:
            raise ValueError(
                f"cost has shape {costs.shape}; expected {table.sensitivity.shape} "
                "(layers x candidates)."
            )
    choice, used = _solve(table.sensitivity, costs, budget, method=method)
    rows = np.arange(len(table.layers))
    choices = tuple(
        LayerChoice(
            path=name,
            candidate=table.candidates[c],
            sensitivity=float(table.sensitivity[i, c]),
            cost=float(costs[i, c]),
        )
        for i, (name, c) in enumerate(zip(table.layers, choice, strict=True))
    )
    return MixedPrecisionPlan(
        choices=choices,
        sensitivity=float(table.sensitivity[rows, choice].sum()),
        cost=float(costs[rows, choice].sum()),
        budget=float(budget),
        method=used,
    )


def to_quant_rules(plan: MixedPrecisionPlan, **rule_kwargs: Any) -> list[Any]:
    """The plan as ``archjax.quant.QuantRule`` objects, one anchored rule per layer.

    Args:
      plan: from :func:`allocate`; every chosen candidate must carry a ``format``
        (candidates made from archjax.quant formats do).
      **rule_kwargs: other ``QuantRule`` fields shared by all rules (e.g.
        ``activation=IntFormat(bits=8)``).

    Returns:
      A list of ``QuantRule`` in layer order, ready for ``archjax.quant.quantize``.
    """
    bare = [c.path for c in plan.choices if c.candidate.format is None]
    if bare:
        raise ValueError(
            f"Layers {bare} chose candidates without a format; build candidates from "
            "archjax.quant formats (e.g. IntFormat(bits=4)) to get QuantRules."
        )
    return [
        QuantRule(pattern=c.pattern, weight=c.candidate.format, **rule_kwargs) for c in plan.choices
    ]


# --- the multiple-choice knapsack -------------------------------------------------------


def _solve(values: np.ndarray, costs: np.ndarray, budget: float, *, method: str):
    """Indices ``[num_layers]`` minimizing ``sum values`` with ``sum costs <= budget``."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; allowed: {', '.join(METHODS)}.")
    if not np.all(np.isfinite(values)) or not np.all(np.isfinite(costs)):
        raise ValueError("sensitivities and costs must be finite.")
    cheapest = costs.min(axis=1).sum()
    if cheapest > budget:
        raise ValueError(
            f"budget={budget:.6g} is below the cheapest assignment's cost {cheapest:.6g}."
        )
    if method == "auto":
        method = "milp" if values.shape[0] <= AUTO_EXACT_MAX_LAYERS else "greedy"
    if method == "milp":
        choice = _milp(values, costs, budget)
        if choice is not None:
            return choice, "milp"
        # The solver failed or hit its time limit: say so, not only in ``plan.method``.
        warnings.warn(
            "The integer program (milp) found no solution in its time limit; the plan falls "
            "back to the greedy allocation (plan.method == 'greedy'), which may be worse.",
            UserWarning,
            stacklevel=3,
        )
        method = "greedy"
    if method == "dp":
        choice = _pareto_dp(values, costs, budget)
        if _total(costs, choice) <= budget:
            return choice, "dp"
        method = "greedy"  # over budget only by floating-point rounding of the sums
    return _greedy(values, costs, budget), "greedy"


def _total(costs: np.ndarray, choice: np.ndarray) -> float:
    return float(costs[np.arange(len(choice)), choice].sum())


def _milp(values, costs, budget, time_limit: float = 60.0):
    """Exact integer program (HiGHS); ``None`` if it fails. Re-solved tighter on tolerance slips."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    num_layers, num_cands = values.shape
    # Scaled so that HiGHS's absolute tolerances are relative ones.
    c = (values / max(np.abs(values).max(), 1e-300)).ravel()
    scale = max(budget, 1e-300)
    one_each = np.kron(np.eye(num_layers), np.ones(num_cands))
    rhs = 1.0
    for _ in range(4):
        res = milp(
            c,
            integrality=np.ones_like(c),
            bounds=Bounds(0, 1),
            constraints=[
                LinearConstraint(one_each, 1, 1),
                LinearConstraint((costs / scale).ravel()[None, :], -np.inf, rhs),
            ],
            options={"mip_rel_gap": 0.0, "time_limit": time_limit},
        )
        if res.x is None or res.status != 0:
            return None
        choice = np.argmax(res.x.reshape(num_layers, num_cands), axis=1)
        excess = _total(costs, choice) - budget
        if excess <= 0:
            return choice
        rhs -= 2 * excess / scale  # a feasibility tolerance let it through: tighten
    return None


def _pareto_dp(values, costs, budget, max_states: int = 1_000_000):
    """Exact DP over the Pareto frontier of (cost, sensitivity) of layer prefixes."""
    num_layers = values.shape[0]
    # The least cost the remaining layers need, to prune prefixes that cannot fit.
    rest = np.concatenate([np.cumsum(costs.min(axis=1)[::-1])[::-1], [0.0]])
    frontier = [(0.0, 0.0, ())]  # (cost, value, choices), cost ascending, value descending
    for layer in range(num_layers):
        expanded = [
            (cost + costs[layer, j], value + values[layer, j], picks + (j,))
            for cost, value, picks in frontier
            for j in range(values.shape[1])
            if cost + costs[layer, j] + rest[layer + 1] <= budget
        ]
        expanded.sort(key=lambda s: (s[0], s[1]))
        frontier = []
        for state in expanded:
            if not frontier or state[1] < frontier[-1][1]:
                frontier.append(state)
        if len(frontier) > max_states:
            raise ValueError(f"the DP frontier exceeds {max_states} states; use method='milp'.")
    return np.asarray(min(frontier, key=lambda s: s[1])[2])


def _greedy(values, costs, budget):
    """From the cheapest assignment, repeatedly take the move with the best drop per cost."""
    rows = np.arange(values.shape[0])
    choice = np.asarray([np.lexsort((values[i], costs[i]))[0] for i in rows])
    blocked = np.zeros(values.shape, bool)  # moves that only fit up to rounding
    while True:
        spent = _total(costs, choice)
        d_value = values - values[rows, choice][:, None]
        d_cost = costs - costs[rows, choice][:, None]
        ok = (d_value < 0) & (spent + d_cost <= budget) & ~blocked
        if not ok.any():
            return choice
        # Moves that also save cost come first; then the largest drop per unit of cost.
        gain = np.where(d_cost <= 0, np.inf, -d_value / np.where(d_cost > 0, d_cost, 1.0))
        score = np.where(ok, gain, -np.inf)
        best = np.flatnonzero(score.ravel() == score.max())
        i, j = divmod(int(best[np.argmin(d_value.ravel()[best])]), values.shape[1])
        previous = choice[i]
        choice[i] = j
        if _total(costs, choice) > budget:
            choice[i] = previous
            blocked[i, j] = True
