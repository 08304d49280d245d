"""ResNet family: parameter counts against the papers/torchvision, and every
registered model through init + apply + grad under jit at a tiny size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models


def _num_params(model, input_shape):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "name,expected",
    [
        # torchvision's resnet18/34/50 with 1000 classes.
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
    ],
)
def test_imagenet_param_counts_match_torchvision(name, expected):
    assert _num_params(models.create(name), (1, 224, 224, 3)) == expected


@pytest.mark.parametrize(
    "name,paper", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6)]
)
def test_cifar_param_counts_close_to_paper(name, paper):
    # He et al. Table 6 uses zero-padding shortcuts (option A); ours are 1x1
    # projections (option B), which add two small convs: within 3%.
    n = _num_params(models.create(name), (1, 32, 32, 3))
    assert abs(n - paper) / paper < 0.03, n


def test_width_and_depth_knobs_change_size():
    base = _num_params(models.create("resnet20"), (1, 16, 16, 1))
    wide = _num_params(models.create("resnet20", width_multiplier=2.0), (1, 16, 16, 1))
    deep = _num_params(models.create("resnet32"), (1, 16, 16, 1))
    assert 3.5 * base < wide < 4.5 * base  # conv params grow with width squared
    assert deep > 1.5 * base


def test_plain_toggle_removes_shortcuts():
    model = models.create("resnet20", residual=False)
    params = _params(model, (1, 16, 16, 1))
    assert not any("downsample" in k for block in params.values() for k in block)
    assert _num_params(model, (1, 16, 16, 1)) < _num_params(
        models.create("resnet20"), (1, 16, 16, 1)
    )


def test_bfloat16_compute_keeps_fp32_params():
    model = models.create("resnet8", dtype=jnp.bfloat16, width_multiplier=0.25)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    )
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    logits = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((2, 8, 8, 1)), train=False), variables
    )
    assert logits.dtype == jnp.float32


def test_rejects_non_image_input():
    model = models.create("resnet8")
    with pytest.raises(ValueError, match="NHWC"):
        model.init(jax.random.key(0), jnp.zeros((2, 8)), train=False)


def _params(model, input_shape=(1, 32, 32, 3)):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    )["params"]


def test_new_cifar_depths_close_to_paper():
    # He et al. Table 6: ResNet-44 0.66M, ResNet-110 1.7M (option A shortcuts; ours are B).
    for name, paper in [("resnet44", 0.66e6), ("resnet110", 1.7e6)]:
        n = _num_params(models.create(name), (1, 32, 32, 3))
        assert abs(n - paper) / paper < 0.03, (name, n)


def test_v1_puts_the_stride_in_the_first_1x1():
    def conv_shapes(name):
        model = models.create(name, stage_sizes=(1, 1), width_multiplier=1 / 16)
        _, state = jax.eval_shape(
            lambda: model.init_with_output(
                jax.random.key(0),
                jnp.zeros((1, 64, 64, 3)),
                train=False,
                capture_intermediates=lambda mdl, _: mdl.name in ("conv1", "conv2"),
            )
        )
        block = state["intermediates"]["stage2_block1"]
        return block["conv1"]["__call__"][0].shape, block["conv2"]["__call__"][0].shape

    # 64 px -> 16 px after the stem; stage 2 halves it in conv1 (v1) or conv2 (v1.5).
    assert conv_shapes("resnet50_v1") == ((1, 8, 8, 8), (1, 8, 8, 8))
    assert conv_shapes("resnet50") == ((1, 16, 16, 8), (1, 8, 8, 8))
    assert _num_params(models.create("resnet50_v1"), (1, 64, 64, 3)) == _num_params(
        models.create("resnet50"), (1, 64, 64, 3)
    )


def test_c_and_d_variants_have_a_deep_stem():
    b, c, d = (_params(models.create(n)) for n in ("resnet50", "resnet50c", "resnet50d"))
    assert "stem_conv" in b and "stem_conv1" not in b
    for p in (c, d):
        assert [p[f"stem_conv{i}"]["kernel"].shape for i in (1, 2, 3)] == [
            (3, 3, 3, 32),
            (3, 3, 32, 32),
            (3, 3, 32, 64),
        ]
    # D only changes how the shortcut downsamples (avg-pool then 1x1): same weights as C.
    assert jax.tree.map(lambda x: x.shape, c) == jax.tree.map(lambda x: x.shape, d)


def test_wide_resnet_doubles_the_bottleneck_only():
    base, wide = _params(models.create("resnet50")), _params(models.create("wide_resnet50_2"))
    for conv in ("conv1", "conv2"):
        assert wide["stage4_block1"][conv]["kernel"].shape[-1] == 1024
        assert base["stage4_block1"][conv]["kernel"].shape[-1] == 512
    assert wide["stage4_block1"]["conv3"]["kernel"].shape[-1] == 2048
    assert wide["head"]["kernel"].shape == base["head"]["kernel"].shape


def test_resnet_rs_has_se_in_every_block_and_a_conv_stem_pool():
    p = _params(models.create("resnetrs50"))
    blocks = [k for k in p if k.startswith("stage")]
    assert len(blocks) == 16 and all("se" in p[k] for k in blocks)
    assert p["stage4_block1"]["se"]["fc1"]["kernel"].shape == (2048, 512)  # ratio 0.25
    assert "stem_pool_conv" in p


def test_depth_and_width_knobs_on_imagenet_variants():
    n = lambda name, **kw: _num_params(models.create(name, **kw), (1, 32, 32, 3))
    assert n("resnet50") < n("resnet101") < n("resnet152") < n("resnet200")
    assert n("resnet50d", stage_sizes=(1, 1, 1, 1)) < n("resnet50d")
    half, full = n("resnetrs50", width_multiplier=0.5), n("resnetrs50")
    assert 0.2 * full < half < 0.3 * full  # conv params grow with width squared


def test_plain_toggle_on_bottleneck_and_rs():
    for name in ("resnet50", "resnetrs50"):
        p = _params(models.create(name, residual=False))
        assert not any("downsample" in k for block in p.values() for k in block)


def test_norm_knob():
    def collections(**kw):
        return jax.eval_shape(
            lambda: models.create("resnet18d", **kw).init(
                jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
            )
        )

    assert "batch_stats" in collections()
    grouped = collections(norm="group")
    assert "batch_stats" not in grouped
    assert set(grouped["params"]["stem_bn"]) == {"scale", "bias"}
    assert "stem_bn" not in collections(norm="none")["params"]
    with pytest.raises(ValueError, match="norm must be one of"):
        collections(norm="batchnorm")


def test_bad_variant_values_fail_with_allowed_values():
    with pytest.raises(ValueError, match=r"stem must be one of \('imagenet', 'deep', 'cifar'\)"):
        _params(models.create("resnet18", stem="wide"))
    with pytest.raises(ValueError, match="drop_path_rate must be in"):
        _params(models.create("resnet18", drop_path_rate=1.0))


def test_stochastic_depth_uses_dropout_rng_only_when_training():
    tiny = dict(stage_sizes=(1, 1), width_multiplier=1 / 16, num_classes=3)
    model = models.create("resnet18", drop_path_rate=0.5, **tiny)
    x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)  # no "dropout" rng needed

    def train(model, rngs):
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    sample = jax.jit(lambda key: train(model, {"dropout": key}))
    assert not np.allclose(sample(jax.random.key(0)), sample(jax.random.key(1)))
    np.testing.assert_array_equal(sample(jax.random.key(0)), sample(jax.random.key(0)))
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: train(model, {}))
    # Rate 0 draws nothing, so training needs no rng.
    jax.eval_shape(lambda: train(models.create("resnet18", **tiny), {}))
