"""MLP-Mixer family: knobs and stochastic depth, at tiny sizes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models


def _shapes(model, size):
    """Parameter shapes from abstract evaluation (nothing is compiled)."""
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )["params"]


def _num_params(model, size):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_shapes(model, size)))


def test_image_size_sets_token_mlp_and_rejects_other_inputs():
    model = models.create("mixer_s16_224", depth=1, embed_dim=32, image_size=64)
    block = _shapes(model, 64)["block0"]
    chex.assert_shape(block["mlp_tokens"]["fc1"]["kernel"], (16, 16))  # 4x4 tokens -> 0.5 x 32
    chex.assert_shape(block["mlp_channels"]["fc1"]["kernel"], (32, 128))  # 4 x 32
    with pytest.raises(ValueError, match="64x64"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_width_and_depth_knobs_map_b_onto_s():
    # Mixer-S is Mixer-B at 2/3 of the width and 8 blocks.
    b_as_s = models.create("mixer_b16_224", width_multiplier=2 / 3, depth=8)
    assert _num_params(b_as_s, 224) == _num_params(models.create("mixer_s16_224"), 224)


def test_drop_path_random_in_train_mode_only_and_bf16_logits():
    model = models.create("mixer_s32_224", drop_path_rate=0.5, num_classes=5, depth=2,
                          embed_dim=32, image_size=32)  # fmt: skip
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    # Random parameters from the abstract tree: a full init compiles ~10x slower
    # than apply on CPU (one threefry per parameter); test_all_models covers init.
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype),
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)),
    )
    apply = jax.jit(model.apply, static_argnames="train")
    a = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    chex.assert_trees_all_equal(apply(variables, x, train=False), apply(variables, x, train=False))
    bf16 = models.create(
        "mixer_s32_224", dtype=jnp.bfloat16, num_classes=5, depth=2, embed_dim=32, image_size=32
    )
    assert jax.eval_shape(lambda: bf16.apply(variables, x)).dtype == jnp.float32
