"""VGG: parameter counts and logits equal timm's after weight import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from archjax import models
from archjax.models.vgg import adaptive_avg_pool

from .timm_utils import randomize_batch_norms, timm_logits


@pytest.mark.parametrize("size_in,size_out", [((1, 1), (7, 7)), ((2, 3), (7, 7)), ((9, 5), (4, 3))])
def test_adaptive_avg_pool_equals_torch(size_in, size_out):
    x = np.random.default_rng(0).normal(size=(2, *size_in, 3)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), size_out
    )
    np.testing.assert_allclose(
        np.asarray(adaptive_avg_pool(jnp.asarray(x), size_out)),
        want.numpy().transpose(0, 2, 3, 1),
        rtol=1e-6,
        atol=1e-6,
    )


def test_vgg11_bn_logits_equal_timm_after_import():
    torch.manual_seed(0)
    tm = timm.create_model("vgg11_bn", pretrained=False, num_classes=10).eval()
    randomize_batch_norms(tm)
    variables = models.load_torch_state_dict("vgg11_bn", tm.state_dict())
    # At 64 px the last feature map is 2x2, so timm's head first pools it
    # adaptively to 7x7 before its 7x7 convolution; that path is compared too.
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    model = models.create("vgg11_bn", num_classes=10)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    theirs = timm_logits(tm, x)
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )


def test_converter_refuses_missing_batch_norm():
    sd = timm.create_model("vgg11", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="State dict has no key"):
        models.load_torch_state_dict("vgg11_bn", sd)
