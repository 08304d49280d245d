"""VGG family: parameter counts against the paper, depth/width/BatchNorm knobs, head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax.models.vgg import adaptive_avg_pool


def _variables(model, input_shape=(1, 32, 32, 3)):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    )


def _num_params(model, input_shape=(1, 32, 32, 3)):
    return sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(_variables(model, input_shape)["params"])
    )


@pytest.mark.parametrize(
    "name,paper", [("vgg11", 133e6), ("vgg13", 133e6), ("vgg16", 138e6), ("vgg19", 144e6)]
)
def test_param_counts_match_paper(name, paper):
    # Simonyan & Zisserman, Table 2 (in millions, rounded).
    n = _num_params(models.create(name), (1, 224, 224, 3))
    assert abs(n - paper) / paper < 0.005, n


def test_depth_knob_counts_convolutions():
    for depth, stage_sizes in [(11, (1, 1, 2, 2, 2)), (19, (2, 2, 4, 4, 4))]:
        params = _variables(models.create(f"vgg{depth}"))["params"]
        convs = [k for k in params if "_conv" in k]
        assert len(convs) == sum(stage_sizes) == depth - 3  # + fc1, fc2, head
    assert _num_params(models.create("vgg11", stage_sizes=(1, 1, 1, 1, 1))) < _num_params(
        models.create("vgg11")
    )


def test_width_knob_scales_every_layer():
    base = _variables(models.create("vgg16"))["params"]
    half = _variables(models.create("vgg16", width_multiplier=0.5))["params"]
    assert half["stage5_conv3"]["kernel"].shape == (3, 3, 256, 256)
    assert half["fc1"]["kernel"].shape == (7, 7, 256, 2048)
    assert half["head"]["kernel"].shape == (2048, 1000)
    assert base["fc1"]["kernel"].shape == (7, 7, 512, 4096)


def test_batch_norm_toggle():
    plain, bn = _variables(models.create("vgg11")), _variables(models.create("vgg11_bn"))
    assert "batch_stats" not in plain
    assert set(bn["batch_stats"]) == {
        k.replace("conv", "bn") for k in plain["params"] if "_conv" in k
    }
    assert _variables(models.create("vgg11_bn", batch_norm=False)).keys() == plain.keys()


@pytest.mark.parametrize("size", [32, 64, 224, 256])
def test_any_resolution_gives_logits(size):
    model = models.create("vgg11", num_classes=7)
    variables = _variables(model, (1, size, size, 3))
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3))), variables)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_adaptive_avg_pool_repeats_and_averages():
    x = jnp.arange(2.0).reshape(1, 1, 2, 1)
    # torch's bins for 2 -> 7: [0], [0], [0], [0, 1], [1], [1], [1].
    np.testing.assert_allclose(adaptive_avg_pool(x, (1, 7))[0, 0, :, 0], [0, 0, 0, 0.5, 1, 1, 1])
    y = jnp.ones((2, 9, 9, 3))
    np.testing.assert_allclose(adaptive_avg_pool(y, (3, 3)), jnp.ones((2, 3, 3, 3)))


def test_dropout_uses_rng_only_when_training():
    tiny = dict(models.tiny_kwargs("vgg11"), num_classes=3)
    model = models.create("vgg11", dropout_rate=0.5, **tiny)
    x = jnp.ones((2, 32, 32, 3))
    variables = _variables(model)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)
    jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)


def test_bad_config_fails():
    with pytest.raises(ValueError, match="same length"):
        _variables(models.create("vgg11", stage_sizes=(1, 1)))
    with pytest.raises(ValueError, match="NHWC"):
        _variables(models.create("vgg11"), (1, 32, 32))
