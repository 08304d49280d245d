"""With every piece off, the one step is the plain SGD step; pieces compose under jit."""

import chex
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from archjax import models
from archjax.train import (
    Recipe,
    accuracy,
    create_train_state,
    cross_entropy,
    make_recipe_train_step,
    make_train_step,
)


@pytest.fixture(scope="module")
def resnet():
    model = models.create("resnet8", num_classes=10, width_multiplier=0.25)
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(model, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, size=8).astype(np.int32),
    }
    return model, tx, state, batch


def _plain_step(model, tx, label_smoothing):
    """The plain step written out: value_and_grad of the cross-entropy, one tx.update."""

    def step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            logits, updates = model.apply(
                {**state.variables(), "params": params},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            loss = cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
            return loss, (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, param_updates),
            batch_stats=updates["batch_stats"],
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "accuracy": accuracy(logits, batch["label"]),
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    return step


def test_default_recipe_is_the_plain_step(resnet):
    model, tx, state, batch = resnet
    plain = jax.jit(_plain_step(model, tx, label_smoothing=0.1))(state, batch)
    step = make_train_step(model, tx, recipe=Recipe(label_smoothing=0.1))
    chex.assert_trees_all_close(jax.jit(step)(state, batch), plain, atol=1e-6, rtol=1e-6)


def test_deprecated_spellings_warn_and_build_the_same_step(resnet):
    model, tx, state, batch = resnet
    recipe = Recipe(label_smoothing=0.1)
    want = str(jax.make_jaxpr(make_train_step(model, tx, recipe=recipe))(state, batch))
    with pytest.warns(DeprecationWarning, match="make_recipe_train_step is deprecated"):
        alias = make_recipe_train_step(model, tx, recipe)
    with pytest.warns(DeprecationWarning, match=r"label_smoothing=\.\.\.\) is deprecated"):
        keyword = make_train_step(model, tx, label_smoothing=0.1)
    for step in (alias, keyword):
        assert str(jax.make_jaxpr(step)(state, batch)) == want


def test_bn_model_with_microbatches_and_mixing(resnet):
    """BatchNorm + accumulation: runs; running stats are the mean of the micro-batch updates."""
    model, tx, state, batch = resnet
    step = jax.jit(make_train_step(model, tx, recipe=Recipe(microbatches=2, mixup_alpha=0.2)))
    new, metrics = step(state, batch)
    assert np.isfinite(metrics["loss"]) and int(new.step) == 1
    chex.assert_trees_all_equal_shapes(new.batch_stats, state.batch_stats)


def test_recipe_rejects_bad_values():
    with pytest.raises(ValueError, match="Recipe.microbatches must be >= 1"):
        Recipe(microbatches=0)
    with pytest.raises(ValueError, match="Unknown precision"):
        Recipe(precision="int8")


def test_step_needs_a_classifier_with_num_classes():
    with pytest.raises(ValueError, match="int num_classes field.*Dense has num_classes=None"):
        make_train_step(nn.Dense(10), optax.sgd(0.1))
