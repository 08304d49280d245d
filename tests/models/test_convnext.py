"""ConvNeXt family: stage layout, knobs, layer scale and stochastic depth, at tiny sizes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import archjax.models as models
from archjax.models.convnext import ConvNeXtBlock

TINY = dict(depths=(1, 1, 1, 1), width_multiplier=1 / 8, num_classes=5)


def _shapes(model, size=32):
    """Parameter shapes from abstract evaluation (nothing is compiled)."""
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )["params"]


def _num_params(model):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_shapes(model)))


def test_stage_layout():
    params = _shapes(models.create("convnext_tiny", **TINY))
    assert "stage0_downsample_conv" not in params  # the stem already downsamples by 4
    for i, dim in enumerate((12, 24, 48, 96)):
        chex.assert_shape(params[f"stage{i}_block0"]["conv_dw"]["kernel"], (7, 7, 1, dim))
        chex.assert_shape(params[f"stage{i}_block0"]["fc1"]["kernel"], (dim, 4 * dim))
        if i:
            chex.assert_shape(params[f"stage{i}_downsample_conv"]["kernel"], (2, 2, dim // 2, dim))
    chex.assert_shape(params["stem_conv"]["kernel"], (4, 4, 3, 12))
    chex.assert_shape(params["head_norm"]["scale"], (96,))


def test_width_and_depth_knobs():
    tiny, small = models.create("convnext_tiny"), models.create("convnext_small")
    block = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_shapes(tiny)["stage2_block0"]))
    assert _num_params(small) - _num_params(tiny) == 18 * block  # 27 - 9 blocks in stage 3
    base = _num_params(models.create("convnext_tiny", **TINY))
    wide = _num_params(models.create("convnext_tiny", **{**TINY, "width_multiplier": 1 / 4}))
    assert 3.5 * base < wide < 4.5 * base


def test_layer_scale_starts_at_1e_6():
    block = ConvNeXtBlock()
    variables = block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)), train=False)
    np.testing.assert_allclose(variables["params"]["gamma"], np.full(8, 1e-6))


def test_drop_path_random_in_train_mode_and_bf16_logits():
    model = models.create("convnext_tiny", drop_path_rate=0.5, **TINY)
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
    assert not np.array_equal(a, b)
    bf16 = models.create("convnext_tiny", dtype=jnp.bfloat16, **TINY)
    assert jax.eval_shape(lambda: bf16.apply(variables, x)).dtype == jnp.float32
