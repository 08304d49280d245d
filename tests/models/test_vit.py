"""ViT family: knobs, σReparam (power iteration, train/eval state) and the
attention-entropy probe, at tiny sizes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax.models.vit import attention_entropies

TINY = dict(depth=2, embed_dim=32, num_heads=2, image_size=32, num_classes=5)
X = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))


def _random_variables(model):
    """Random variables from the abstract tree: a full init compiles ~10x slower than
    apply on CPU (one threefry per parameter); test_all_models covers init."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype),
        jax.eval_shape(lambda: model.init(jax.random.key(0), X, train=False)),
    )


@pytest.fixture(scope="module")
def plain():
    """A tiny ViT with stochastic depth and its variables."""
    model = models.create("vit_tiny_patch16_224", drop_path_rate=0.5, **TINY)
    return model, _random_variables(model)


@pytest.fixture(scope="module")
def reparam():
    """A tiny ViT with σReparam and its variables."""
    model = models.create("vit_tiny_patch16_224", sigma_reparam=True, **TINY)
    return model, _random_variables(model)


def _num_params(model, size):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def test_vit_sigma_reparam_state_and_gradients(reparam):
    model, variables = reparam
    x = X
    block = variables["params"]["block0"]
    for layer in (block["attn"]["qkv"], block["attn"]["proj"], block["mlp"]["fc1"]):
        assert set(layer) == {"kernel", "bias", "gamma"}
    assert "gamma" not in variables["params"]["head"]  # only the blocks' Dense layers

    def loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(logits**2), updates

    grads, updates = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    chex.assert_tree_all_finite(grads)
    assert np.abs(np.asarray(grads["block1"]["mlp"]["fc2"]["gamma"])) > 0
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])
    assert not np.allclose(
        updates["batch_stats"]["block0"]["attn"]["qkv"]["sigma_u"],
        variables["batch_stats"]["block0"]["attn"]["qkv"]["sigma_u"],
    )


def test_attention_entropy_probe_is_between_zero_and_log_tokens(plain):
    model, variables = plain
    x = X
    # Sharp attention: large q/k weights push the entropy towards 0.
    sharp = jax.tree.map(jnp.array, variables)  # copies
    sharp["params"]["block0"]["attn"]["qkv"]["kernel"] *= 30.0
    # Zero q/k/v: every query attends uniformly, entropy exactly log(num_tokens).
    uniform = jax.tree.map(jnp.array, variables)  # copies
    uniform["params"]["block1"]["attn"]["qkv"]["kernel"] *= 0.0
    apply = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["intermediates"])[1])
    log_n = math.log(2 * 2 + 1)  # 2x2 patches + class token
    for v in (variables, sharp, uniform):
        ent = attention_entropies(apply(v)["intermediates"])
        chex.assert_shape(ent, (2,))
        assert np.all(ent >= 0) and np.all(ent <= log_n + 1e-5), ent
    ent_sharp = attention_entropies(apply(sharp)["intermediates"])
    ent_uniform = attention_entropies(apply(uniform)["intermediates"])
    assert ent_sharp[0] < attention_entropies(apply(variables)["intermediates"])[0]
    np.testing.assert_allclose(ent_uniform[1], log_n, rtol=1e-5)


def test_width_multiplier_keeps_head_dim_so_base_half_is_small():
    base_half = models.create("vit_base_patch16_224", width_multiplier=0.5, image_size=32)
    small = models.create("vit_small_patch16_224", image_size=32)
    assert _num_params(base_half, 32) == _num_params(small, 32)


def test_image_size_sets_position_embeddings_and_rejects_other_inputs():
    model = models.create("vit_small_patch32_224", image_size=64, depth=1, width_multiplier=1 / 6)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    chex.assert_shape(variables["params"]["pos_embed"], (1, 2 * 2 + 1, 64))
    with pytest.raises(ValueError, match="64x64"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_drop_path_needs_dropout_rng_in_train_mode_only(plain):
    model, variables = plain
    x = jnp.tile(X, (4, 1, 1, 1))  # 8 samples: all kept or all dropped is unlikely
    apply = jax.jit(model.apply, static_argnames="train")
    chex.assert_trees_all_equal(apply(variables, x, train=False), apply(variables, x, train=False))
    with pytest.raises(Exception, match="dropout"):
        apply(variables, x, train=True)
    a = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_bfloat16_compute_keeps_fp32_params():
    model = models.create("vit_tiny_patch16_224", dtype=jnp.bfloat16, sigma_reparam=True, **TINY)
    # Abstract evaluation gives dtypes without compiling.
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), X, train=False))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    out = jax.eval_shape(lambda v: model.apply(v, X, train=False), variables)
    assert out.dtype == jnp.float32


def test_fused_attention_equals_einsum_and_keeps_the_entropy_probe(plain):
    """``attention_impl="xla"`` (jax.nn.dot_product_attention) computes the einsum path's
    logits; collecting the entropy probe falls back to the explicit softmax."""
    _, variables = plain
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    einsum = models.create("vit_tiny_patch16_224", **TINY)
    fused = models.create("vit_tiny_patch16_224", attention_impl="xla", **TINY)
    np.testing.assert_allclose(
        fused.apply(variables, x), einsum.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    _, probed = fused.apply(variables, x, mutable=["intermediates"])
    assert attention_entropies(probed["intermediates"]).shape == (TINY["depth"],)
    with pytest.raises(ValueError, match="attention_impl='flash' is not one of"):
        models.create("vit_tiny_patch16_224", attention_impl="flash", **TINY).init(
            jax.random.key(0), x
        )


def test_padded_attention_equals_unpadded_with_gradients():
    """The cuDNN path pads tokens to a multiple of 8 and masks them: values and gradients
    equal the unpadded attention (checked with the XLA implementation on CPU)."""
    from archjax.models.vit import padded_attention

    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 13, 2, 8))

    def loss(q, k, v, multiple):
        y = padded_attention(q, k, v, implementation="xla", multiple=multiple)
        return jnp.sum(jnp.sin(y)), y

    (l1, y1), g1 = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, 1)
    (l8, y8), g8 = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, 8)
    assert y8.shape == y1.shape == (2, 13, 2, 8)
    chex.assert_trees_all_close((l8, y8, g8), (l1, y1, g1), rtol=1e-5, atol=1e-6)
