"""Gradient accumulation == one full-batch step (fp32, 1e-6)."""

import chex
import jax
import numpy as np
import optax
import pytest

from archjax.train import Recipe, accumulate_gradients, make_train_step
from tests.train.conftest import init_state


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_step_equals_full_batch_step(tiny_mlp, batch16, k):
    tx = optax.adamw(1e-2, weight_decay=0.1)
    state = init_state(tiny_mlp, tx)
    recipe = dict(label_smoothing=0.1)
    full = jax.jit(make_train_step(tiny_mlp, tx, recipe=Recipe(**recipe)))
    accum = jax.jit(make_train_step(tiny_mlp, tx, recipe=Recipe(microbatches=k, **recipe)))
    s_full, m_full = full(state, batch16)
    s_acc, m_acc = accum(state, batch16)
    chex.assert_trees_all_close(s_acc.params, s_full.params, atol=1e-6, rtol=0)
    chex.assert_trees_all_close(s_acc.opt_state, s_full.opt_state, atol=1e-6, rtol=0)
    chex.assert_trees_all_close(m_acc, m_full, atol=1e-6, rtol=0)
    assert not np.allclose(s_full.params["head"]["kernel"], state.params["head"]["kernel"])


def test_accumulate_gradients_without_jit(batch16):
    """The wrapper alone, on a linear least-squares loss, outside jit."""
    w = {"w": jax.numpy.ones((64,)) * 0.01}

    def loss_fn(params, b, key):
        del key
        pred = b["image"].reshape(b["image"].shape[0], -1) @ params["w"]
        loss = jax.numpy.mean((pred - b["label"]) ** 2)
        return loss, {"mean_pred": jax.numpy.mean(pred)}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    key = jax.random.key(0)
    chex.assert_trees_all_close(
        accumulate_gradients(grad_fn, 8)(w, batch16, key), grad_fn(w, batch16, key), atol=1e-6
    )
    with pytest.raises(ValueError, match="cannot be split into 3 equal micro-batches"):
        accumulate_gradients(grad_fn, 3)(w, batch16, key)
