"""Curvature toolkit against the exact Hessian of a small MLP (issue 7, acceptance 1)."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from archjax import analysis, parallel


class MLP(nn.Module):
    """Small enough (79 parameters) for ``jax.hessian`` to form its Hessian."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.tanh(nn.Dense(6)(x))
        x = jnp.tanh(nn.Dense(4)(x))
        return nn.Dense(3)(x)


BATCH = 16


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(BATCH, 5)).astype(np.float32),
        "label": rng.integers(0, 3, size=BATCH).astype(np.int32),
    }
    model = MLP()
    variables = model.init(jax.random.key(0), batch["image"])
    params = variables["params"]
    loss_fn = analysis.classifier_loss(model, variables)
    flat, unravel = ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
    hessian = np.asarray(hessian, np.float64)
    # Which flat coordinates belong to which layer (ravel_pytree follows leaf order).
    owners = np.concatenate(
        [np.full(leaf.size, i) for i, leaf in enumerate(jax.tree.leaves(params))]
    )
    paths = analysis.param_paths(params)
    return dict(
        batch=batch,
        params=params,
        loss_fn=loss_fn,
        hessian=hessian,
        unravel=unravel,
        n=flat.size,
        layer_of_coord=np.asarray([analysis.module_path(paths[i]) for i in owners]),
    )


def test_param_paths_are_module_paths(problem):
    paths = analysis.param_paths(problem["params"])
    assert paths == [f"Dense_{i}/{leaf}" for i in range(3) for leaf in ("bias", "kernel")]
    assert analysis.module_path("stage1/block0/conv1/kernel") == "stage1/block0/conv1"


def test_hvp_equals_hessian_times_vector(problem):
    v = np.random.default_rng(1).normal(size=problem["n"]).astype(np.float32)
    vector = problem["unravel"](v)
    got = analysis.hvp(problem["loss_fn"], problem["params"], problem["batch"], vector)
    want = problem["unravel"]((problem["hessian"] @ v).astype(np.float32))
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_hvp_restricted_to_a_layer_is_the_diagonal_block(problem):
    v = np.random.default_rng(2).normal(size=problem["n"]).astype(np.float32)
    sel = problem["layer_of_coord"] == "Dense_1"
    got = analysis.hvp(
        problem["loss_fn"],
        problem["params"],
        problem["batch"],
        problem["unravel"](v),
        subset=r"^Dense_1/",
    )
    block = np.where(sel[:, None] & sel[None, :], problem["hessian"], 0.0)
    want = problem["unravel"]((block @ v).astype(np.float32))
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_hutchinson_within_three_standard_errors(problem):
    est = analysis.hutchinson_trace(
        problem["loss_fn"],
        problem["params"],
        problem["batch"],
        key=jax.random.key(3),
        num_probes=200,
    )
    exact = np.trace(problem["hessian"])
    assert est.stderr > 0
    assert abs(est.trace - exact) <= 3 * est.stderr, (est.trace, exact, est.stderr)
    # Per-layer: the estimates add up to the total, and so do the exact block traces.
    assert sum(est.per_layer.values()) == pytest.approx(est.trace, rel=1e-6)
    diag = np.diag(problem["hessian"])
    exact_layers = {name: diag[problem["layer_of_coord"] == name].sum() for name in est.per_layer}
    assert sum(exact_layers.values()) == pytest.approx(exact, rel=1e-9)
    for name, value in est.per_layer.items():
        assert abs(value - exact_layers[name]) <= 4 * est.per_layer_stderr[name], name
    assert est.num_params == {"Dense_0": 36, "Dense_1": 28, "Dense_2": 15}


def test_hutchinson_on_a_subset_only_sees_that_subset(problem):
    est = analysis.hutchinson_trace(
        problem["loss_fn"],
        problem["params"],
        problem["batch"],
        key=jax.random.key(4),
        num_probes=16,
        subset=r"kernel$",
    )
    assert set(est.per_layer) == {"Dense_0", "Dense_1", "Dense_2"}
    assert est.num_params == {"Dense_0": 30, "Dense_1": 24, "Dense_2": 12}


def test_lanczos_top3_matches_eigh(problem):
    want = np.linalg.eigvalsh(problem["hessian"])[::-1][:3]
    got = analysis.top_eigenvalues(
        problem["loss_fn"],
        problem["params"],
        problem["batch"],
        key=jax.random.key(5),
        k=3,
        num_steps=40,
    )
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_power_iteration_finds_the_largest_magnitude_eigenvalue(problem):
    evals, evecs = np.linalg.eigh(problem["hessian"])
    top = np.argmax(np.abs(evals))
    lam, vec = analysis.power_iteration(
        problem["loss_fn"],
        problem["params"],
        problem["batch"],
        key=jax.random.key(6),
        num_iters=300,
    )
    assert float(lam) == pytest.approx(evals[top], rel=1e-3)
    flat = np.asarray(ravel_pytree(vec)[0], np.float64)
    assert abs(flat @ evecs[:, top]) == pytest.approx(1.0, abs=1e-2)


def test_slq_with_full_steps_recovers_the_spectrum(problem):
    evals = np.linalg.eigvalsh(problem["hessian"])
    sd = analysis.spectral_density(
        problem["loss_fn"],
        problem["params"],
        problem["batch"],
        key=jax.random.key(7),
        num_steps=problem["n"],
        num_runs=2,
    )
    assert sd.nodes.shape == (2, problem["n"]) and sd.num_params == problem["n"]
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=1e-5)
    scale = np.abs(evals).max()
    for run in sd.nodes:
        np.testing.assert_allclose(np.sort(run), evals, atol=1e-3 * scale)
    grid = np.linspace(evals[0] - 1, evals[-1] + 1, 4000)
    mass = np.sum(sd.density(grid, sigma=0.05)) * (grid[1] - grid[0])
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_full_data_is_the_average_over_batches(problem):
    rng = np.random.default_rng(8)
    batches = [
        {
            "image": rng.normal(size=(8, 5)).astype(np.float32),
            "label": rng.integers(0, 3, size=8).astype(np.int32),
        }
        for _ in range(4)
    ]
    whole = jax.tree.map(lambda *xs: np.concatenate(xs), *batches)
    vector = problem["unravel"](rng.normal(size=problem["n"]).astype(np.float32))
    args = (problem["loss_fn"], problem["params"])
    got = analysis.hvp(*args, analysis.stack_batches(batches), vector, stacked=True)
    chex.assert_trees_all_close(got, analysis.hvp(*args, whole, vector), atol=1e-6, rtol=1e-5)


def test_sharded_equals_unsharded(problem):
    mesh = parallel.make_mesh()
    assert mesh.size == 8
    params = jax.device_put(problem["params"], parallel.replicated(mesh))
    sharded = parallel.shard_batch(problem["batch"], mesh)
    vector = problem["unravel"](np.ones(problem["n"], np.float32))
    args = (problem["loss_fn"],)
    chex.assert_trees_all_close(
        analysis.hvp(*args, params, sharded, vector),
        analysis.hvp(*args, problem["params"], problem["batch"], vector),
        atol=1e-6,
        rtol=1e-5,
    )
    key = jax.random.key(9)
    a = analysis.hutchinson_trace(*args, params, sharded, key=key, num_probes=3)
    b = analysis.hutchinson_trace(*args, problem["params"], problem["batch"], key=key, num_probes=3)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-5, atol=1e-6)
    stacked = analysis.stack_batches([problem["batch"]] * 2, mesh)
    assert stacked["image"].sharding.spec == jax.sharding.PartitionSpec(None, "data")
    c = analysis.hutchinson_trace(*args, params, stacked, key=key, num_probes=3, stacked=True)
    np.testing.assert_allclose(c.samples, b.samples, rtol=1e-5, atol=1e-6)


def test_bad_arguments_name_what_is_allowed(problem):
    args = (problem["loss_fn"], problem["params"], problem["batch"])
    with pytest.raises(ValueError, match="selects no parameter.*Dense_0/bias"):
        analysis.hutchinson_trace(*args, key=jax.random.key(0), subset="conv")
    with pytest.raises(ValueError, match="num_probes must be >= 2"):
        analysis.hutchinson_trace(*args, key=jax.random.key(0), num_probes=1)
    with pytest.raises(ValueError, match="k must be in"):
        analysis.top_eigenvalues(*args, key=jax.random.key(0), k=5, num_steps=3)
