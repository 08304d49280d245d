"""NF-ResNet / NFNet: registry, knobs, stochastic depth and signal-propagation statistics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax.models.nfnet import SPP_KEYS, signal_propagation

NAMES = ["nf_resnet26", "nf_resnet50", "nf_resnet101"] + [f"dm_nfnet_f{i}" for i in range(4)]
X = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))


def _num_params(model):
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), X[:1], train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


def _init(model):
    return jax.jit(lambda: model.init(jax.random.key(0), X, train=False))()


def _random_variables(model, *, gain):
    """Variables of ``model`` from numpy (cheap: no compiled RNG); all gains = ``gain``.

    Weight standardization makes the statistics independent of the kernel scale.
    """
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), X, train=False))

    def fill(path, leaf):
        key = jax.tree_util.keystr(path)
        if "gain" in key:
            return np.full(leaf.shape, gain, np.float32)
        if "kernel" in key:
            return rng.normal(size=leaf.shape).astype(np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _gains_to_one(variables):
    """Residual branches are zero at init (gain 0 / SkipInit 0); open them up."""
    return jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.ones_like(a) if "gain" in jax.tree_util.keystr(path) else a, variables
    )


def test_registered_names():
    assert set(NAMES) <= set(models.list_models())


def test_depths_and_params_grow_with_variant():
    counts = [
        _num_params(models.create(f"dm_nfnet_f{i}", width_multiplier=1 / 16)) for i in range(4)
    ]
    assert counts == sorted(counts) and len(set(counts)) == 4
    a = _num_params(models.create("nf_resnet50", width_multiplier=0.25))
    b = _num_params(models.create("nf_resnet50", width_multiplier=0.5))
    assert 3.0 * a < b < 4.5 * a


@pytest.mark.parametrize("name", ["nf_resnet50", "dm_nfnet_f0"])
def test_signal_propagation_statistics(name):
    model = models.create(name, num_classes=5, width_multiplier=1 / 8, stage_sizes=(3, 2, 1, 1))
    spp_fn = jax.jit(lambda v: model.apply(v, X, train=False, mutable=["intermediates"])[1])

    # With zero residual branches (the state at init), non-transition blocks are identities.
    spp = signal_propagation(spp_fn(_random_variables(model, gain=0.0))["intermediates"])
    assert set(spp) == set(SPP_KEYS)
    for value in spp.values():
        chex.assert_shape(value, (7,))
        chex.assert_tree_all_finite(value)
    np.testing.assert_array_equal(spp["res_avg_var"], 0.0)
    np.testing.assert_allclose(spp["avg_var"][1:3], spp["avg_var"][0], rtol=1e-5)

    # With the branches open, the variance follows Var(x_{l+1}) = Var(x_l) + alpha^2 Var(f_l)
    # inside a stage (Brock et al. 2021a, Sec. 3).
    variables = _random_variables(model, gain=1.0)
    spp = signal_propagation(spp_fn(variables)["intermediates"])
    assert np.all(spp["res_avg_var"] > 0)
    for b in (1, 2, 4):  # blocks that follow a block of the same stage
        want = spp["avg_var"][b - 1] + 0.2**2 * spp["res_avg_var"][b]
        np.testing.assert_allclose(spp["avg_var"][b], want, rtol=0.02)
    # Without the intermediates collection nothing is recorded.
    assert "intermediates" not in variables


def test_alpha_knob_scales_residual_branches():
    kw = dict(num_classes=5, **models.tiny_kwargs("nf_resnet26"))
    variables = _random_variables(models.create("nf_resnet26", **kw), gain=1.0)
    out = lambda alpha: jax.jit(models.create("nf_resnet26", alpha=alpha, **kw).apply)(
        variables, X[:2, :16, :16]
    )
    assert not np.allclose(out(0.2), out(0.5))


def test_stochastic_depth_uses_dropout_rng_only_in_training():
    kw = dict(num_classes=5, **models.tiny_kwargs("dm_nfnet_f0"))
    model = models.create("dm_nfnet_f0", drop_path_rate=0.5, **kw)
    variables = _random_variables(model, gain=1.0)
    x = X[:, :16, :16]
    train = jax.jit(lambda k: model.apply(variables, x, train=True, rngs={"dropout": k}))
    assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: model.apply(variables, x, train=True))
    # Eval mode and rate 0 need no rng and are deterministic.
    evaluated = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
    no_drop = models.create("dm_nfnet_f0", **kw)
    chex.assert_trees_all_close(
        evaluated, jax.jit(lambda v: no_drop.apply(v, x, train=True))(variables), atol=1e-6
    )


def test_residual_branches_are_zero_at_init():
    """SkipInit gains start at 0 and last-conv gains at 1 (NFNets), as in timm."""
    variables = _init(models.create("dm_nfnet_f0", **models.tiny_kwargs("dm_nfnet_f0")))
    for name, block in variables["params"].items():
        if name.startswith("stage"):
            assert float(block["skipinit_gain"]) == 0.0
            np.testing.assert_array_equal(block["conv3"]["gain"], 1.0)


def test_bfloat16_compute_keeps_fp32_params():
    model = models.create("dm_nfnet_f0", dtype=jnp.bfloat16, **models.tiny_kwargs("dm_nfnet_f0"))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), X, train=False))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    out = jax.eval_shape(lambda v: model.apply(v, X, train=False), variables)
    assert out.dtype == jnp.float32


def test_rejects_non_image_input():
    with pytest.raises(ValueError, match="NHWC"):
        models.create("nf_resnet50").init(jax.random.key(0), jnp.zeros((2, 8)), train=False)
