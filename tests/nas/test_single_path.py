"""Single-Path NAS: differentiable decisions, exact children, the MACs penalty, decode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archjax import quant
from archjax.nas import single_path as sp
from archjax.train import create_train_state

# Two skippable layers (stride 1, 4 -> 4) and one that is not (stride 2, 4 -> 8).
SPACE = sp.SinglePathSpace(
    widths=(4, 8), depths=(2, 1), strides=(1, 2), kernels=(3, 5), expansions=(2, 4), stem_width=4
)
NET = sp.SinglePathSuperNet(SPACE)
X = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
Y = jnp.arange(4) % 10


@functools.cache
def _variables():
    """Supernet variables with non-trivial BatchNorm statistics and affine parameters."""
    v = NET.init(jax.random.key(0), X)
    noisy = {}
    for name in ("params", "batch_stats"):
        leaves, tree = jax.tree.flatten(v[name])
        keys = jax.random.split(jax.random.key(1), len(leaves))
        leaves = [
            jnp.abs(x + 0.3 * jax.random.normal(k, x.shape)) if x.ndim == 1 and x.size > 3 else x
            for x, k in zip(leaves, keys, strict=True)
        ]
        noisy[name] = jax.tree.unflatten(tree, leaves)
    return noisy


@functools.cache
def _supernet_apply():
    return jax.jit(lambda v, x: NET.apply(v, x, train=False))


def _thresholds(tree):
    return {k: {t: v[t] for t in ("t_kernel", "t_expansion") if t in v}
            for k, v in tree.items() if k.startswith("layer")}  # fmt: skip


def test_indicator_is_exact_forward_and_sigmoid_backward():
    x = jnp.asarray([-3.0, -0.1, 0.0, 0.2, 5.0])
    np.testing.assert_array_equal(sp.indicator(x), [0.0, 0.0, 1.0, 1.0, 1.0])
    s = jax.nn.sigmoid(x)
    np.testing.assert_allclose(jax.grad(lambda x: sp.indicator(x).sum())(x), s * (1 - s))


def test_gradients_reach_every_threshold():
    v = _variables()

    def loss(params):
        variables = {**v, "params": params}
        logits, _ = NET.apply(variables, X, train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()
        return ce + sp.cost_penalty(sp.macs(SPACE, params), weight=0.1)

    grads = jax.jit(jax.grad(loss))(v["params"])
    thresholds = jax.tree.leaves(_thresholds(grads))
    # Per layer (leaves in key order): skip + wide (skippable) or wide alone, one kernel.
    assert [t.size for t in thresholds] == [2, 1, 2, 1, 1, 1]
    for t in thresholds:
        assert np.all(np.isfinite(t)) and np.all(t != 0)
    # The cost term alone pushes every threshold up (fewer MACs): negative gradients.
    cost = jax.grad(lambda p: sp.macs(SPACE, p))(v["params"])
    assert all(np.all(t < 0) for t in jax.tree.leaves(_thresholds(cost)))


def _archs():
    n = len(SPACE.layers())
    yield sp.SinglePathArch(kernels=(3,) * n, expansions=(4,) * n)  # the fixed 3x3 network
    yield SPACE.largest()  # the fixed 5x5 network
    yield sp.SinglePathArch(kernels=(0, 0, 5), expansions=(0, 0, 2))  # both skips taken
    rng = np.random.default_rng(0)
    yield from (SPACE.sample(rng) for _ in range(3))


def test_pinned_supernet_equals_the_standalone_child():
    v = _variables()
    for arch in _archs():
        pinned = {**v, "params": sp.pin(SPACE, v["params"], arch)}
        assert sp.decode(SPACE, pinned["params"]) == arch
        model, child = sp.extract(SPACE, pinned, arch)
        assert isinstance(model, sp.SinglePathNet) and model.arch == arch
        # A standalone network: its own parameter shapes, nothing of the superkernels.
        fresh = model.init(jax.random.key(0), X)
        assert jax.tree.map(jnp.shape, child) == jax.tree.map(jnp.shape, fresh)
        skipped = [i for i, e in enumerate(arch.expansions) if e == 0]
        assert all(f"layer{i + 1}" not in child["params"] for i in skipped)
        # Equal up to float summation order (zero kernel taps and channels added).
        expected = _supernet_apply()(pinned, X)
        np.testing.assert_allclose(model.apply(child, X), expected, rtol=1e-5, atol=1e-5)


def test_skipped_layers_are_the_identity():
    v = _variables()
    arch = sp.SinglePathArch(kernels=(0, 0, 3), expansions=(0, 0, 4))
    pinned = {**v, "params": sp.pin(SPACE, v["params"], arch)}

    def trunk(module, variables, x):  # the input of layer3 after the stem and layers 1-2
        return module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])

    _, inter = trunk(NET, pinned, X)
    stem = inter["intermediates"]["stem_bn"]["__call__"][0]
    for name in ("layer1", "layer2"):
        np.testing.assert_array_equal(
            inter["intermediates"][name]["__call__"][0], jnp.maximum(stem, 0)
        )


def test_macs_equal_the_decoded_network_and_grow_with_every_choice():
    v = _variables()
    for arch in _archs():
        model, _ = sp.extract(SPACE, v, arch)
        counted = quant.report(model, [], (1, 8, 8, 1)).macs
        assert sp.arch_macs(SPACE, arch) == counted
        assert float(sp.macs(SPACE, sp.pin(SPACE, v["params"], arch))) == counted
        # One step up in any choice of any layer strictly adds MACs.
        for i, layer in enumerate(SPACE.layers()):
            k, e = arch.kernels[i], arch.expansions[i]
            bigger = []
            if e and k < max(SPACE.kernels):
                bigger.append((SPACE.kernels[SPACE.kernels.index(k) + 1], e))
            ladder = (0, *SPACE.expansions) if layer.skippable else SPACE.expansions
            if e < max(ladder):
                bigger.append((k or min(SPACE.kernels), ladder[ladder.index(e) + 1]))
            for k2, e2 in bigger:
                up = sp.SinglePathArch(
                    kernels=(*arch.kernels[:i], k2, *arch.kernels[i + 1 :]),
                    expansions=(*arch.expansions[:i], e2, *arch.expansions[i + 1 :]),
                )
                assert sp.arch_macs(SPACE, up) > sp.arch_macs(SPACE, arch)


def test_search_step_trains_thresholds_under_jit_and_decode_is_deterministic():
    tx = optax.multi_transform(
        {"weights": optax.adam(1e-3), "thresholds": optax.adam(0.5)},
        lambda params: jax.tree.map_with_path(
            lambda path, _: "thresholds" if str(path[-1].key).startswith("t_") else "weights",
            params,
        ),
    )
    state = create_train_state(NET, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1))
    step = jax.jit(sp.make_search_step(NET, tx, cost_weight=1.0, target_macs=1.0))
    before = sp.decode(SPACE, state.params)
    assert before == SPACE.largest()  # thresholds start at 0 below every norm
    for _ in range(3):
        state, metrics = step(state, {"image": X, "label": Y})
        assert np.isfinite(float(metrics["loss"])) and float(metrics["macs"]) > 0
    t0 = jax.tree.leaves(_thresholds(NET.init(jax.random.key(0), X)["params"]))
    t3 = jax.tree.leaves(_thresholds(state.params))
    # A budget of 1 MAC: the penalty raises every threshold.
    assert all(np.all(b > a) for a, b in zip(t0, t3, strict=True))
    arch = sp.decode(SPACE, state.params)
    assert arch == sp.decode(SPACE, jax.device_get(state.params))
    SPACE.check(arch)


def test_cost_penalty():
    assert float(sp.cost_penalty(jnp.asarray(50.0), weight=2.0, target=100.0)) == 0.0
    np.testing.assert_allclose(sp.cost_penalty(jnp.asarray(200.0), weight=2.0, target=100.0),
                               2 * np.log(2), rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(sp.cost_penalty(jnp.asarray(200.0), weight=0.5), 0.5 * np.log(200))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernels=(3, 4)), "kernels must be odd"),
        (dict(kernels=()), "kernels is an empty choice"),
        (dict(expansions=()), "expansions is an empty choice"),
        (dict(kernels=(5, 3)), "kernels must be increasing"),
        (dict(widths=(8,), depths=(1, 1)), "give the same number"),
        (dict(strides=(3, 1, 1)), "strides must be 1 or 2"),
        (dict(expansions=(0, 6)), "positive integers"),
    ],
)
def test_bad_spaces_get_one_clear_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        sp.SinglePathSpace(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_architectures_get_one_clear_line():
    bad = [
        (sp.SinglePathArch(kernels=(3, 3, 3), expansions=(2, 2, 0)), r"expansions\[2\] = 0"),
        (sp.SinglePathArch(kernels=(3, 7, 3), expansions=(2, 2, 2)), r"kernels\[1\] = 7"),
        (sp.SinglePathArch(kernels=(3, 3), expansions=(2, 2)), "3 searchable layers"),
    ]
    for arch, match in bad:
        with pytest.raises(ValueError, match=match) as err:
            SPACE.check(arch)
        assert "\n" not in str(err.value)
