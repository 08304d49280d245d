"""HAWQ-V2 sensitivities and the budgeted allocation (issue 7, acceptance 2)."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax import analysis
from archjax.quant import (
    MXFP4,
    FloatFormat,
    IntFormat,
    NF4Format,
    calibrate_tensor,
    fake_quant,
    match_rule,
    mixed,
)


def _brute_force(values, costs, budget):
    best = np.inf
    for choice in itertools.product(*(range(c) for c in [values.shape[1]] * values.shape[0])):
        rows = np.arange(values.shape[0])
        if costs[rows, choice].sum() <= budget:
            best = min(best, values[rows, choice].sum())
    return best


def _problems(seed, count):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        layers, cands = rng.integers(2, 6), rng.integers(2, 5)
        values = rng.exponential(size=(layers, cands))
        if rng.random() < 0.5:  # size-like integer costs, often tied
            costs = rng.integers(1, 6, size=(layers, cands)).astype(np.float64) * 1000
        else:
            costs = rng.uniform(0.1, 3.0, size=(layers, cands))
        lo, hi = costs.min(axis=1).sum(), costs.max(axis=1).sum()
        yield values, costs, lo + rng.random() * (hi - lo)


@pytest.mark.parametrize("method", ["milp", "dp"])
def test_exact_methods_find_the_brute_force_optimum(method):
    for values, costs, budget in _problems(0, 40):
        choice, used = mixed._solve(values, costs, budget, method=method)
        rows = np.arange(len(choice))
        assert used == method
        assert costs[rows, choice].sum() <= budget
        assert values[rows, choice].sum() == pytest.approx(_brute_force(values, costs, budget))


def test_greedy_never_exceeds_the_budget():
    gaps = []
    for values, costs, budget in _problems(1, 40):
        choice, used = mixed._solve(values, costs, budget, method="greedy")
        rows = np.arange(len(choice))
        assert used == "greedy"
        assert costs[rows, choice].sum() <= budget
        best = _brute_force(values, costs, budget)
        assert values[rows, choice].sum() >= best - 1e-12
        gaps.append(values[rows, choice].sum() / best - 1)
    assert np.median(gaps) < 0.1  # a heuristic, but not a bad one


def test_budget_and_method_errors():
    values, costs = np.ones((2, 2)), np.asarray([[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="below the cheapest assignment's cost 2"):
        mixed._solve(values, costs, 1.5, method="milp")
    with pytest.raises(ValueError, match="allowed: auto, milp, dp, greedy"):
        mixed._solve(values, costs, 3.0, method="ilp")


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    params = {
        "Dense_0": {"kernel": rng.normal(size=(5, 6)), "bias": np.zeros(6)},
        "Dense_1": {"kernel": rng.normal(size=(6, 3)) * 0.1, "bias": np.zeros(3)},
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    batch = {"x": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}

    def loss_fn(p, b):
        h = jnp.tanh(b["x"] @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        return jnp.mean((h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]) ** 2)

    return params, batch, loss_fn


def test_sensitivity_is_mean_trace_times_perturbation(mlp):
    params, batch, loss_fn = mlp
    est = analysis.hutchinson_trace(
        loss_fn, params, batch, key=jax.random.key(0), num_probes=4, subset=r"kernel$"
    )
    cands = [mixed.uniform_int(b) for b in (2, 4, 8)]
    table = mixed.sensitivities(params, est, cands)
    assert table.layers == ("Dense_0", "Dense_1")
    np.testing.assert_array_equal(table.num_params, [30, 18])
    w = params["Dense_1"]["kernel"]
    err = float(jnp.sum((cands[1].quantize(w) - w) ** 2))
    assert table.sensitivity[1, 1] == pytest.approx(est.per_layer["Dense_1"] / 18 * err, rel=1e-6)
    positive = mixed.sensitivities(params, {"Dense_0": 2.0, "Dense_1": 1.0}, cands)
    assert np.all(np.diff(positive.sensitivity, axis=1) < 0)  # more bits, less damage
    np.testing.assert_array_equal(table.size_bits()[:, 0], [60, 36])
    np.testing.assert_array_equal(table.bops({"Dense_0": 30, "Dense_1": 18})[:, 2], [1920, 1152])
    with pytest.raises(ValueError, match="subset='\\(\\^\\|/\\)kernel\\$'"):
        whole = analysis.TraceEstimate(  # as if estimated over kernels and biases
            trace=1.0,
            stderr=0.1,
            per_layer={"Dense_0": 0.5, "Dense_1": 0.5},
            per_layer_stderr={"Dense_0": 0.1, "Dense_1": 0.1},
            num_params={"Dense_0": 36, "Dense_1": 21},
            samples=np.zeros((2, 2)),
        )
        mixed.sensitivities(params, whole, cands)
    with pytest.raises(ValueError, match="macs has no entry for layers \\['Dense_1'\\]"):
        table.bops({"Dense_0": 30})


def test_allocation_plan_names_each_layer_exactly(mlp):
    params, _, _ = mlp
    cands = [mixed.uniform_int(b) for b in (2, 4, 8)]
    table = mixed.sensitivities(params, {"Dense_0": 3.0, "Dense_1": 50.0}, cands)
    budget = table.size_bits()[:, 1].sum()  # the size of uniform int4
    plan = mixed.allocate(table, budget)
    assert plan.method == "milp" and plan.cost <= budget
    assert [c.path for c in plan.choices] == ["Dense_0", "Dense_1"]
    for choice in plan.choices:
        assert re.search(choice.pattern, choice.path)
        assert not re.search(choice.pattern, choice.path + "0")
        assert not re.search(choice.pattern, "stage/" + choice.path)
    uniform4 = table.sensitivity[:, 1].sum()
    assert plan.sensitivity <= uniform4
    assert "total sensitivity" in str(plan)
    with pytest.raises(ValueError, match="layers x candidates"):
        mixed.allocate(table, budget, cost=np.ones((3, 3)))
    with pytest.raises(ValueError):  # no formats (and, before the merge, no QuantRule)
        mixed.to_quant_rules(plan)


def test_candidates_from_callables():
    def int3(w):
        return mixed.uniform_int(3).quantize(w)

    int3.bits = 3
    cand = mixed.as_candidate(int3)
    assert (cand.bits, cand.name) == (3, "int3")
    with pytest.raises(ValueError, match="needs a .bits attribute"):
        mixed.as_candidate(lambda w: w)
    with pytest.raises(ValueError, match="Candidate.bits"):
        mixed.Candidate(name="x", bits=0, quantize=int3)


def test_formats_are_candidates_and_plans_become_rules(mlp):
    params, _, _ = mlp
    formats = [IntFormat(bits=4), FloatFormat(exponent_bits=4, mantissa_bits=3), IntFormat(bits=8)]
    table = mixed.sensitivities(params, {"Dense_0": 3.0, "Dense_1": 50.0}, formats)
    assert [c.bits for c in table.candidates] == [4, 8, 8]
    plan = mixed.allocate(table, table.size_bits()[:, 0].sum() + 4 * 18)
    rules = mixed.to_quant_rules(plan)
    for choice in plan.choices:
        assert match_rule(rules, choice.path).weight == choice.candidate.format


def test_block_formats_are_candidates():
    """NF4 / MX candidates quantize with their own blocks (along the kernel's input axis)."""
    w = jax.random.normal(jax.random.key(0), (64, 3))
    for fmt in (NF4Format(), MXFP4):
        cand = mixed.as_candidate(fmt)
        gran = fmt.weight_granularity
        want = fake_quant(w, fmt, calibrate_tensor(w, fmt, granularity=gran), granularity=gran)
        assert (cand.bits, cand.name) == (fmt.bits, fmt.name)
        np.testing.assert_array_equal(cand.quantize(w), want)


def test_milp_failure_falls_back_to_greedy_with_a_warning(monkeypatch):
    values, costs, budget = next(_problems(2, 1))
    monkeypatch.setattr(mixed, "_milp", lambda *a: None)  # the solver found nothing
    with pytest.warns(UserWarning, match="falls back to the greedy allocation"):
        choice, used = mixed._solve(values, costs, budget, method="milp")
    assert used == "greedy"
    assert costs[np.arange(len(choice)), choice].sum() <= budget
