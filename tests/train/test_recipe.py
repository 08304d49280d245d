"""With every piece off, the recipe step is the plain step; pieces compose under jit."""

import chex
import jax
import numpy as np
import optax
import pytest

from archjax import models
from archjax import train as T


@pytest.fixture(scope="module")
def resnet():
    model = models.create("resnet8", num_classes=10, width_multiplier=0.25)
    tx = optax.sgd(0.1, momentum=0.9)
    state = T.create_train_state(model, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, size=8).astype(np.int32),
    }
    return model, tx, state, batch


def test_default_recipe_equals_make_train_step(resnet):
    model, tx, state, batch = resnet
    plain = jax.jit(T.make_train_step(model, tx, label_smoothing=0.1))(state, batch)
    recipe = jax.jit(T.make_recipe_train_step(model, tx, T.Recipe(label_smoothing=0.1)))(
        state, batch
    )
    chex.assert_trees_all_close(recipe, plain, atol=1e-6, rtol=1e-6)


def test_bn_model_with_microbatches_and_mixing(resnet):
    """BatchNorm + accumulation: runs; running stats are the mean of the micro-batch updates."""
    model, tx, state, batch = resnet
    step = jax.jit(T.make_recipe_train_step(model, tx, T.Recipe(microbatches=2, mixup_alpha=0.2)))
    new, metrics = step(state, batch)
    assert np.isfinite(metrics["loss"]) and int(new.step) == 1
    chex.assert_trees_all_equal_shapes(new.batch_stats, state.batch_stats)


def test_recipe_rejects_bad_values():
    with pytest.raises(ValueError, match="Recipe.microbatches must be >= 1"):
        T.Recipe(microbatches=0)
    with pytest.raises(ValueError, match="Unknown precision"):
        T.Recipe(precision="int8")
