"""Pruning criteria against brute-force numpy oracles; rules, ratios and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.sparsity as sp


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "stem": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 8)), jnp.float32)},
        "stage1": {
            "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 8)), jnp.float32)},
            "bn": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
        },
        "mid": {"kernel": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)},
        "head": {
            "kernel": jnp.asarray(rng.normal(size=(16, 4)), jnp.float32),
            "bias": jnp.zeros(4),
        },
    }


def test_prunable_default_policy_keeps_first_last_and_vectors_dense():
    flags = sp.prunable(_params())
    assert flags == {
        "stem": {"kernel": False},
        "stage1": {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False}},
        "mid": {"kernel": True},
        "head": {"kernel": False, "bias": False},
    }
    all_kernels = sp.prunable(_params(), sp.first_last_rules(prune_first=True, prune_last=True))
    assert all_kernels["stem"]["kernel"] and all_kernels["head"]["kernel"]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.999])
def test_global_magnitude_exact_count_and_smallest_magnitudes(sparsity):
    params = _params()
    # Ties across and within leaves: the oracle breaks them by flat position.
    params["mid"]["kernel"] = params["mid"]["kernel"].at[0, :4].set(0.5).at[1, :4].set(-0.5)
    params["stage1"]["conv"]["kernel"] = params["stage1"]["conv"]["kernel"].at[0, 0, 0, :3].set(0.5)
    flags = sp.prunable(params)
    mask = jax.jit(lambda p: sp.global_magnitude(p, sparsity, prunable=flags))(params)
    leaves = [
        np.asarray(x)
        for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags), strict=True)
        if f
    ]
    flat = np.concatenate([np.abs(x).ravel() for x in leaves])
    k = int(round(sparsity * flat.size))
    # Oracle: sort by (|w|, position), prune the first k.
    order = sorted(range(flat.size), key=lambda i: (flat[i], i))
    want = np.ones(flat.size, bool)
    want[order[:k]] = False
    got = np.concatenate(
        [
            np.asarray(m).ravel()
            for m, f in zip(jax.tree.leaves(mask), jax.tree.leaves(flags), strict=True)
            if f
        ]
    )
    np.testing.assert_array_equal(got, want)
    assert (~got).sum() == k
    for m, f in zip(jax.tree.leaves(mask), jax.tree.leaves(flags), strict=True):
        if not f:
            assert np.asarray(m).all()


def test_layer_magnitude_and_random_hit_per_leaf_counts():
    params = _params()
    flags = sp.prunable(params)
    ratios = sp.layer_sparsities(params, 0.7, prunable=flags, distribution="erk")
    # Jitted: one compile each instead of one per eager op and shape.
    for mask in jax.jit(
        lambda p, k: (
            sp.layer_magnitude(p, ratios, prunable=flags),
            sp.random_mask(p, ratios, prunable=flags, key=k),
        )
    )(params, jax.random.key(0)):
        for x, m, r in zip(
            jax.tree.leaves(params), jax.tree.leaves(mask), jax.tree.leaves(ratios), strict=True
        ):
            assert (~np.asarray(m)).sum() == round(r * x.size)
    lm = sp.layer_magnitude(params, 0.5, prunable=flags)["mid"]["kernel"]
    w = np.abs(np.asarray(params["mid"]["kernel"]))
    assert w[~np.asarray(lm)].max() <= w[np.asarray(lm)].min()
    random_half = jax.jit(lambda k: sp.random_mask(params, 0.5, prunable=flags, key=k))
    a, b, c = (random_half(jax.random.key(i)) for i in (1, 1, 2))
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))
    assert not np.array_equal(a["mid"]["kernel"], c["mid"]["kernel"])


def test_erk_keeps_the_total_budget_and_favours_small_layers():
    params = _params()
    flags = sp.prunable(params)
    for dist in ("uniform", "erk"):
        r = sp.layer_sparsities(params, 0.8, prunable=flags, distribution=dist)
        kept = sum(
            (1 - s) * x.size
            for x, s, f in zip(
                jax.tree.leaves(params), jax.tree.leaves(r), jax.tree.leaves(flags), strict=True
            )
            if f
        )
        total = sum(
            x.size
            for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags), strict=True)
            if f
        )
        assert kept == pytest.approx(0.2 * total)
    r = sp.layer_sparsities(params, 0.8, prunable=flags, distribution="erk")
    assert r["mid"]["kernel"] < r["stage1"]["conv"]["kernel"]  # 128 weights vs 576


def test_snip_prunes_smallest_saliency():
    params = _params()
    flags = sp.prunable(params)
    grads = jax.tree.map(lambda x: jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) + 1.0, params)
    mask = sp.snip(params, grads, 0.5, prunable=flags)
    s = np.abs(np.asarray(params["mid"]["kernel"]) * np.asarray(grads["mid"]["kernel"]))
    c = np.abs(
        np.asarray(params["stage1"]["conv"]["kernel"])
        * np.asarray(grads["stage1"]["conv"]["kernel"])
    )
    kept = np.concatenate(
        [s[np.asarray(mask["mid"]["kernel"])], c[np.asarray(mask["stage1"]["conv"]["kernel"])]]
    )
    gone = np.concatenate(
        [s[~np.asarray(mask["mid"]["kernel"])], c[~np.asarray(mask["stage1"]["conv"]["kernel"])]]
    )
    assert gone.max() <= kept.min() and gone.size == round(0.5 * (s.size + c.size))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (4, 4)])
def test_n_m_exactly_n_per_group_along_inputs(n, m):
    params = _params()
    flags = sp.prunable(params)
    mask = jax.jit(lambda p: sp.n_m(p, prunable=flags, n=n, m=m))(params)
    for key in ("mid", "stage1"):
        x = params["mid"]["kernel"] if key == "mid" else params["stage1"]["conv"]["kernel"]
        k = np.asarray(mask["mid"]["kernel"] if key == "mid" else mask["stage1"]["conv"]["kernel"])
        groups = np.moveaxis(k, -2, -1).reshape(*np.moveaxis(k, -2, -1).shape[:-1], -1, m)
        assert (groups.sum(-1) == n).all()
        w = np.abs(np.moveaxis(np.asarray(x), -2, -1)).reshape(groups.shape)
        assert (np.where(groups, -np.inf, w).max(-1) <= np.where(groups, w, np.inf).min(-1)).all()


def test_iterative_pruning_keeps_old_zeros_pruned():
    params = _params()
    flags = sp.prunable(params)
    targets = sp.imp_sparsities(0.2, 3)
    assert targets == pytest.approx([0.2, 0.36, 0.488])
    assert sp.rounds_for(0.2, 0.488) == 3
    mask = None
    for t in targets:
        # Perturb so later rounds would prefer other weights if old ones were not forced out.
        params = jax.tree.map(lambda x: x * 1.01, params)
        new = sp.global_magnitude(params, t, prunable=flags, mask=mask)
        if mask is not None:
            assert jax.tree.all(jax.tree.map(lambda o, nw: bool((nw <= o).all()), mask, new))
        mask = new
        assert sp.sparsity_of(mask, prunable=flags) == pytest.approx(t, abs=1e-3)


def test_gradual_schedule_is_zhu_gupta_cubic():
    s = sp.gradual_sparsity(initial=0.1, final=0.9, begin_step=100, num_steps=4, frequency=10)
    for t in (0, 100, 105, 110, 125, 140, 1000):
        done = min(max((t - 100) // 10, 0), 4) / 4
        assert float(s(t)) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - done) ** 3)
    assert float(jax.jit(s)(140)) == pytest.approx(0.9)
    assert float(sp.one_shot(0.5, step=3)(2)) == 0.0 and float(sp.one_shot(0.5, step=3)(3)) == 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, f: sp.global_magnitude(p, 1.0, prunable=f), r"sparsity=1.0 is outside \[0, 1\)"),
        (lambda p, f: sp.layer_magnitude(p, -0.1, prunable=f), r"outside \[0, 1\)"),
        (lambda p, f: sp.n_m(p, prunable=f, n=5, m=4), "N <= M"),
        (lambda p, f: sp.n_m(p, prunable=f, n=2, m=3), "M=3 does not divide the input dim 8"),
        (lambda p, f: sp.prunable(p, [sp.PruneRule(pattern="^nope/")]), "matches no parameter"),
        (lambda p, f: sp.PruneRule(pattern="("), "bad regex"),
        (
            lambda p, f: sp.layer_sparsities(p, 0.5, prunable=f, distribution="er"),
            "allowed: uniform, erk",
        ),
        (
            lambda p, f: sp.gradual_sparsity(initial=0.0, final=1.2, begin_step=0, num_steps=1),
            "final=1.2",
        ),
    ],
)
def test_bad_input_one_clear_line(call, message):
    params = _params()
    with pytest.raises(ValueError, match=message) as err:
        call(params, sp.prunable(params))
    assert "\n" not in str(err.value)
