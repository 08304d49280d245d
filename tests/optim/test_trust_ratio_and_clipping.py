"""LARS / LAMB trust ratios and AGC against hand-computed values; spike clipping."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax import optim

W = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
B = np.array([0.3, -0.4], np.float32)
GW = np.array([[0.2, 0.1], [-0.3, 0.4]], np.float32)
GB = np.array([0.05, -0.1], np.float32)
PARAMS = {"dense": {"kernel": jnp.asarray(W), "bias": jnp.asarray(B)}}
GRADS = {"dense": {"kernel": jnp.asarray(GW), "bias": jnp.asarray(GB)}}


def _first_update(name, **kw):
    tx = optim.create_optimizer(name, learning_rate=0.5, num_steps=10, schedule="constant", **kw)
    updates, _ = jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
    return updates


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lars_trust_ratio_by_hand(weight_decay):
    # You et al. (2017) as optax implements it: d = g + wd * w, ratio = 0.001 ||w|| / ||d||,
    # first momentum step = lr * ratio * d. Biases: no decay, no trust ratio.
    updates = _first_update("lars", weight_decay=weight_decay, momentum=0.9)
    d = GW + weight_decay * W
    ratio = 0.001 * np.linalg.norm(W) / np.linalg.norm(d)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5 * ratio * d, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["bias"], -0.5 * GB, rtol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lamb_trust_ratio_by_hand(weight_decay):
    # You et al. (2020): after one Adam step m_hat = g, v_hat = g^2, so
    # r = g / (|g| + eps) + wd * w (decay on matrices only); ratio = ||w|| / ||r||.
    updates = _first_update("lamb", weight_decay=weight_decay, momentum=0.9)
    for name, w, g, decay in (("kernel", W, GW, weight_decay), ("bias", B, GB, 0.0)):
        r = g / (np.abs(g) + 1e-6) + decay * w
        ratio = np.linalg.norm(w) / np.linalg.norm(r)
        np.testing.assert_allclose(updates["dense"][name], -0.5 * ratio * r, rtol=1e-5)


def _unit_norms(x, axes):
    return np.sqrt(np.sum(x**2, axis=axes, keepdims=True))


def test_agc_unitwise_by_hand_and_skips_classifier():
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
        "fc": {"kernel": rng.normal(size=(5, 3)).astype(np.float32)},
        "norm": {"scale": np.array([1.0, 0.0, 2.0], np.float32)},
        "head": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)},
    }
    # Large gradients on some units only, so that some units are clipped and others are not.
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    grads["conv"]["kernel"][..., :2] *= 100.0
    grads["fc"]["kernel"][:, 0] *= 100.0
    grads["head"]["kernel"] *= 100.0
    clipping, eps = 0.1, 1e-3
    tx = optim.agc(clipping, eps=eps)
    out, _ = jax.jit(tx.update)(grads, tx.init(params), params)

    def expected(g, w, axes):
        max_norm = clipping * np.maximum(_unit_norms(w, axes), eps)
        g_norm = _unit_norms(g, axes)
        return np.where(g_norm < max_norm, g, g * max_norm / np.maximum(g_norm, 1e-6))

    conv = expected(grads["conv"]["kernel"], params["conv"]["kernel"], (0, 1, 2))
    fc = expected(grads["fc"]["kernel"], params["fc"]["kernel"], (0,))
    norm = expected(grads["norm"]["scale"], params["norm"]["scale"], None)
    np.testing.assert_allclose(out["conv"]["kernel"], conv, rtol=1e-5)
    np.testing.assert_allclose(out["fc"]["kernel"], fc, rtol=1e-5)
    np.testing.assert_allclose(out["norm"]["scale"], norm, rtol=1e-5)
    # Clipping happened where intended (units 0-1 of the conv), and not elsewhere.
    assert not np.allclose(conv[..., :2], grads["conv"]["kernel"][..., :2])
    chex.assert_trees_all_close(out["head"], grads["head"])  # classifier untouched
    everything = optim.agc(clipping, eps=eps, skip=None)
    clipped_head = everything.update(grads, everything.init(params), params)[0]["head"]["kernel"]
    assert not np.allclose(clipped_head, grads["head"]["kernel"])


def test_spike_clip_follows_stable_spam_adaclip():
    tx = optim.spike_clip(decay=0.9)
    params = {"w": jnp.zeros(4)}
    state = tx.init(params)
    g1 = {"w": jnp.array([1.0, -0.5, 0.2, 0.1])}
    out1, state = jax.jit(tx.update)(g1, state)
    chex.assert_trees_all_close(out1, g1)  # step 1: T_hat = max|g|, nothing exceeds it
    g2 = {"w": jnp.array([10.0, -0.5, -3.0, 0.1])}
    out2, state = jax.jit(tx.update)(g2, state)
    t = 0.9 * (0.1 * 1.0) + 0.1 * 10.0
    t_hat = t / (1 - 0.9**2)
    want = np.where(np.abs(g2["w"]) > t_hat, g2["w"] / 10.0 * t_hat, g2["w"])
    np.testing.assert_allclose(out2["w"], want, rtol=1e-6)
    assert abs(float(out2["w"][0])) < 10.0 and float(out2["w"][1]) == -0.5


def test_path_mask():
    mask = optim.path_mask(r"^head/", match=False)({"head": {"kernel": 1}, "x": {"head": 2}})
    assert mask == {"head": {"kernel": False}, "x": {"head": True}}


def test_novograd_decays_matrices_only():
    tx = optim.create_optimizer("novograd", learning_rate=0.1, num_steps=5, weight_decay=0.5)
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(updates["dense"]["bias"], jnp.zeros(2))
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * W, rtol=1e-5)
