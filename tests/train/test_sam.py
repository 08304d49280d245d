"""SAM's step equals its definition on quadratics with known gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from archjax.train import Recipe, make_train_step, sam_gradients
from tests.train.conftest import init_state

A = jnp.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.1], [0.0, 0.1, 1.0]])


def _quadratic(params, batch, key):
    """L(w) = mean_i 0.5 (w - x_i)^T A (w - x_i); grad = A (w - mean x)."""
    del key
    d = params["w"][None, :] - batch["x"]
    loss = jnp.mean(0.5 * jnp.einsum("bi,ij,bj->b", d, A, d))
    return loss, {"loss_copy": loss}


def test_sam_gradient_is_gradient_at_ascent_point():
    w = {"w": jnp.array([1.0, -2.0, 0.5])}
    batch = {"x": jnp.zeros((4, 3))}
    rho = 0.1
    grad_fn = sam_gradients(jax.value_and_grad(_quadratic, has_aux=True), rho=rho)
    for fn in (grad_fn, jax.jit(grad_fn)):
        (loss, aux), g = fn(w, batch, jax.random.key(0))
        g0 = A @ w["w"]
        want = A @ (w["w"] + rho * g0 / jnp.linalg.norm(g0))
        np.testing.assert_allclose(g["w"], want, rtol=1e-6)
        np.testing.assert_allclose(loss, 0.5 * w["w"] @ A @ w["w"], rtol=1e-6)  # at w, not w+e


def test_m_sharpness_groups_perturb_separately():
    w = {"w": jnp.array([1.0, -2.0, 0.5])}
    x = jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [3.0, -1.0, 0.0], [2.0, 2.0, -2.0]])
    rho = 0.3
    grad_fn = sam_gradients(jax.value_and_grad(_quadratic, has_aux=True), rho=rho, num_groups=2)
    _, g = jax.jit(grad_fn)(w, {"x": x}, jax.random.key(0))
    want = []
    for group in (x[:2], x[2:]):
        gi = A @ (w["w"] - group.mean(0))
        want.append(A @ (w["w"] + rho * gi / jnp.linalg.norm(gi) - group.mean(0)))
    np.testing.assert_allclose(g["w"], np.mean(want, axis=0), rtol=1e-5)


def test_sam_train_step_updates_with_sam_gradient(tiny_mlp, batch16):
    tx = optax.sgd(0.1)
    state = init_state(tiny_mlp, tx)
    step = jax.jit(make_train_step(tiny_mlp, tx, recipe=Recipe(sam_rho=0.05)))
    new, metrics = step(state, batch16)

    def loss(params):
        logits = tiny_mlp.apply({"params": params}, batch16["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch16["label"]).mean()

    g = jax.grad(loss)(state.params)
    e = jax.tree.map(lambda x: 0.05 * x / optax.tree.norm(g), g)
    g_sam = jax.grad(loss)(jax.tree.map(jnp.add, state.params, e))
    want = jax.tree.map(lambda p, gs: p - 0.1 * gs, state.params, g_sam)
    chex.assert_trees_all_close(new.params, want, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss(state.params), rtol=1e-6)
