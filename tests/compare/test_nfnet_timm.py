"""NF-ResNet / NFNet: parameter counts, layers and logits equal timm's."""

import jax
import numpy as np
import pytest
import timm
import torch
from timm.layers import EvoNorm2dS0, ScaledStdConv2d, ScaledStdConv2dSame

from archjax import layers, models

# Reduced depths keep the logits test fast; the converter and layout are the same.
SHORT = (1, 1, 2, 1)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


@pytest.mark.parametrize("name", ["dm_nfnet_f0", "nf_resnet50"])
def test_logits_equal_timm_after_import(name):
    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False, num_classes=10, depths=SHORT).eval()
    with torch.no_grad():  # open the zero-initialized residual branches
        for key, p in tm.named_parameters():
            if key.endswith("gain"):
                p.uniform_(0.5, 1.5)
            elif key.endswith(".bias"):
                p.uniform_(-0.1, 0.1)
    variables = models.load_torch_state_dict(name, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 40, 40, 3)).astype(np.float32)  # odd maps later
    model = models.create(name, num_classes=10, stage_sizes=SHORT)
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    with torch.no_grad():
        theirs = tm(_nchw(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.parametrize("same,stride,groups", [(True, 2, 1), (True, 1, 2), (False, 2, 2)])
def test_scaled_std_conv_equals_timm(same, stride, groups):
    torch.manual_seed(0)
    cls = ScaledStdConv2dSame if same else ScaledStdConv2d
    tc = cls(8, 16, 3, stride=stride, groups=groups, gamma=1.7, eps=1e-5)
    with torch.no_grad():
        tc.gain.uniform_(0.5, 1.5)
        tc.bias.uniform_(-0.5, 0.5)
    params = {
        "kernel": np.transpose(tc.weight.detach().numpy(), (2, 3, 1, 0)),
        "bias": tc.bias.detach().numpy(),
        "gain": tc.gain.detach().numpy().reshape(-1),
    }
    ours = layers.ScaledStdConv(
        16,
        (3, 3),
        strides=stride,
        padding="SAME" if same else 1,
        feature_group_count=groups,
        gamma=1.7,
        eps=1e-5,
    )
    x = np.random.default_rng(0).normal(size=(2, 11, 11, 8)).astype(np.float32)
    y = jax.jit(ours.apply)({"params": params}, x)
    np.testing.assert_allclose(y, _nhwc(tc(_nchw(x))), rtol=1e-5, atol=1e-5)


def test_evonorm_s0_equals_timm():
    torch.manual_seed(0)
    tn = EvoNorm2dS0(64)
    with torch.no_grad():
        for p in (tn.weight, tn.bias, tn.v):
            p.uniform_(0.5, 1.5)
    params = {"scale": tn.weight, "bias": tn.bias, "v": tn.v}
    params = {k: v.detach().numpy() for k, v in params.items()}
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 64)).astype(np.float32)
    y = jax.jit(layers.norm_layer("evonorm_s0", train=False).apply)({"params": params}, x)
    np.testing.assert_allclose(y, _nhwc(tn(_nchw(x))), rtol=1e-5, atol=1e-5)


def test_converter_rejects_unused_keys():
    sd = dict(timm.create_model("nf_resnet26", pretrained=False, depths=(1, 1, 1, 1)).state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="not used by the converter.*extra.weight"):
        models.load_torch_state_dict("nf_resnet26", sd)
