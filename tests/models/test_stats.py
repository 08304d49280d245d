"""Parameter and FLOP accounting: published numbers, conventions, every registered model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax import quant


def test_resnet50_flops_match_published_4_1_gmacs():
    # He et al. 2016, Table 1: 3.8e9 "FLOPs" (multiply-adds) for v1; the v1.5 layout
    # (stride in the 3x3) is usually quoted as 4.1e9 multiply-adds = 8.2e9 FLOPs.
    # XLA counts a multiply-add as 2 FLOPs and skips padded positions.
    flops = models.count_flops(models.create("resnet50"), (1, 224, 224, 3))
    assert abs(flops / 8.2e9 - 1) < 0.05, flops


def test_model_stats_conventions_and_regnet_agreement():
    stats = models.model_stats("regnetx_002", image_size=224)
    assert stats["macs"] == stats["flops"] / 2
    assert stats["params"] == 2_684_792  # timm's regnetx_002
    # XLA's count agrees with the paper's analytic multiply-adds (200MF) within 5%.
    analytic = models.regnet_flops(
        models.generate_regnet(
            models.RegNetParams(depth=13, w0=24, wa=36.44, wm=2.49, group_width=8)
        )
    )
    assert abs(stats["macs"] / analytic - 1) < 0.05, (stats["macs"], analytic)


def test_flops_are_per_batch_and_params_are_not():
    name = "regnety_002"
    kw = models.tiny_kwargs(name)
    one = models.model_stats(name, image_size=32, **kw)
    four = models.model_stats(name, image_size=32, batch=4, **kw)
    assert four["params"] == one["params"]
    np.testing.assert_allclose(four["flops"], 4 * one["flops"], rtol=0.02)


def test_model_stats_rejects_knobs_with_a_module():
    with pytest.raises(ValueError, match="need a model name"):
        models.model_stats(models.create("resnet8"), image_size=32, num_classes=3)


def _distinct_tiny_models():
    """One registered name per distinct tiny architecture (e.g. all tiny RegNetX are equal)."""
    seen = {}
    for name in models.list_models():
        seen.setdefault(repr(models.create(name, num_classes=5, **models.tiny_kwargs(name))), name)
    return sorted(seen.values())


@pytest.mark.parametrize("name", _distinct_tiny_models())
def test_every_registered_model_has_stats(name):
    model = models.create(name, num_classes=5, **models.tiny_kwargs(name))
    shape = (1, 32, 32, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    want = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    assert models.count_params(model, shape) == want > 0
    # At least the classifier's multiply-adds, counted as 2 FLOPs each.
    assert models.count_flops(model, shape) >= 2 * variables["params"]["head"]["kernel"].size


class _OneConv(nn.Module):
    padding: str

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(16, (3, 3), padding=self.padding, use_bias=False)(x)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_executed_and_shape_macs_differ_by_the_padding_taps(padding):
    """model_stats counts the multiply-adds XLA executes; quant.report counts every tap."""
    h = w = 8
    cin, cout = 4, 16
    model = _OneConv(padding)
    executed = models.model_stats(model, image_size=h, channels=cin)["macs"]
    shape = quant.report(model, [], (1, h, w, cin)).macs
    if padding == "VALID":  # no padding: one count
        assert executed == shape == (h - 2) * (w - 2) * 9 * cin * cout
    else:  # per axis, output i sees the taps i-1..i+1 that fall inside 0..h-1
        assert shape == h * w * 9 * cin * cout
        assert executed == (3 * h - 2) * (3 * w - 2) * cin * cout  # 484 of 576 taps
