"""ResNet family: parameter counts and logits equal timm's after weight import."""

import jax
import numpy as np
import pytest
import timm
import torch

from archjax import models

from .timm_utils import randomize_batch_norms, timm_logits


@pytest.mark.parametrize(
    "name,size",
    [
        ("resnet18", 64),
        # Deep stem, conv stem pool, SE and avg-pool shortcuts; at 56 px the last
        # stage halves a 7x7 map, which exercises torch's ceil-mode average pool.
        ("resnetrs50", 56),
    ],
)
def test_logits_equal_timm_after_import(name, size):
    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False, num_classes=10).eval()
    randomize_batch_norms(tm)
    variables = models.load_torch_state_dict(name, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    model = models.create(name, num_classes=10)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    theirs = timm_logits(tm, x)
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )


def test_unknown_converter_and_bad_state_dict():
    with pytest.raises(ValueError, match="No torch weight converter for model 'resnet20'"):
        models.load_torch_state_dict("resnet20", {})
    tm = timm.create_model("resnet18", pretrained=False)
    sd = dict(tm.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="not used by the converter.*extra.weight"):
        models.load_torch_state_dict("resnet18", sd)


def test_state_dict_of_another_variant_is_refused():
    # The converter follows the archjax model's layout, so a ResNet-D state dict
    # cannot be loaded into a ResNet-B by accident (or vice versa).
    sd = timm.create_model("resnet18d", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="State dict has no key 'conv1.weight'"):
        models.load_torch_state_dict("resnet18", sd)
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="State dict has no key 'conv1.0.weight'"):
        models.load_torch_state_dict("resnet18d", sd)
