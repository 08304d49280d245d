"""Zero-cost proxies: determinism, invariances, brute-force definitions, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax import models, nas

SIZE = 8


@functools.cache
def _net(name: str, **kwargs):
    model = models.create(name, num_classes=10, **{**models.tiny_kwargs(name), **kwargs})
    x = jnp.zeros((1, SIZE, SIZE, 3))
    return model, model.init(jax.random.key(0), x, train=False)


def _batch(seed: int, n: int = 16):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, SIZE, SIZE, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, n)),
    }


@pytest.mark.parametrize("name", sorted(nas.PROXIES))
@pytest.mark.parametrize("arch", ["resnet8", "vit_tiny_patch16_224"])
def test_every_proxy_is_deterministic_and_finite(name, arch):
    kwargs = {"patch_size": 4, "image_size": SIZE} if arch.startswith("vit") else {}
    model, variables = _net(arch, **kwargs)
    a = nas.score(name, model, variables, _batch(0))
    b = nas.score(name, model, variables, _batch(0))
    assert a == b and np.isfinite(a), (a, b)


def test_synflow_does_not_see_the_data_and_others_do():
    model, variables = _net("resnet8")
    one, other = _batch(0), _batch(1)
    assert nas.synflow(model, variables, one) == nas.synflow(model, variables, other)
    for name in ("grad_norm", "snip", "naswot"):
        assert nas.score(name, model, variables, one) != nas.score(name, model, variables, other)


def test_synflow_scales_with_the_weights_as_a_product():
    # R is a product of one |w| per layer along each path, and the score sums w * dR/dw
    # = (number of weight layers on the path) * R: scaling the head by s scales it by s.
    model, variables = _net("resnet8")
    base = nas.synflow(model, variables, _batch(0))
    params = dict(variables["params"])
    params["head"] = jax.tree.map(lambda w: 2.0 * w, params["head"])
    scaled = nas.synflow(model, {**variables, "params": params}, _batch(0))
    assert scaled == pytest.approx(2.0 * base, rel=1e-4)


def test_naswot_and_swap_follow_their_definitions_on_the_codes():
    model, variables = _net("resnet8")
    batch = _batch(0, n=8)
    c = nas.activation_codes(model, variables, batch)
    assert c.dtype == bool and c.shape[0] == 8 and c.shape[1] > 100
    agree = np.array([[np.sum(c[i] == c[j]) for j in range(8)] for i in range(8)], np.float64)
    assert nas.naswot(model, variables, batch) == pytest.approx(np.linalg.slogdet(agree)[1])
    assert nas.swap(model, variables, batch) == len({tuple(col) for col in c.T})


def test_grad_norm_and_snip_match_a_hand_written_gradient():
    model, variables = _net("resnet8")
    batch = _batch(0)

    def loss(p):
        logits, _ = model.apply(
            {**variables, "params": p}, batch["image"], train=True, mutable=["batch_stats"]
        )
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(logp[jnp.arange(16), batch["label"]])

    g = jax.grad(loss)(variables["params"])
    norm = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
    sal = sum(
        float(jnp.sum(jnp.abs(w * d)))
        for w, d in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(g), strict=True)
    )
    assert nas.grad_norm(model, variables, batch) == pytest.approx(norm, rel=1e-5)
    assert nas.snip(model, variables, batch) == pytest.approx(sal, rel=1e-5)


def test_bad_input_names_the_problem():
    model, variables = _net("resnet8")
    with pytest.raises(ValueError, match="Unknown zero-cost proxy 'synflo'"):
        nas.score("synflo", model, variables, _batch(0))
    with pytest.raises(ValueError, match="needs labels"):
        nas.grad_norm(model, variables, {"image": _batch(0)["image"]})
    with pytest.raises(ValueError, match="'image' key"):
        nas.snip(model, variables, {"x": 1})
    with pytest.raises(ValueError, match=r"labels of shape \(3,\) do not match 16 images"):
        nas.grad_norm(model, variables, {"image": _batch(0)["image"], "label": jnp.zeros(3, int)})
