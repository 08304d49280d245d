"""ResNet family: parameter counts and logits equal timm's after weight import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from archjax import models


def _timm_logits(tm, x_nhwc):
    with torch.no_grad():
        return tm(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)))).numpy()


def _randomize_batch_norm(tm):
    """Non-trivial BN parameters and statistics, so that running stats are really imported."""
    with torch.no_grad():
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet50",
        "resnet101",
        "resnet50d",  # ResNet-D: deep stem, avg-pool shortcut
        "resnetrs50",  # + SE, conv stem pool
        "wide_resnet50_2",
    ],
)
def test_param_count_equals_timm(name):
    tm = timm.create_model(name, pretrained=False)
    want = sum(p.numel() for p in tm.parameters())
    variables = jax.eval_shape(
        lambda: models.create(name).init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == want


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
    _randomize_batch_norm(tm)
    variables = models.load_torch_state_dict(name, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    model = models.create(name, num_classes=10)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    theirs = _timm_logits(tm, x)
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
