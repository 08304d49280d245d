"""ConvNeXt: parameter counts and logits equal timm's after weight import."""

import jax
import numpy as np
import timm
import torch

from archjax import models

from .timm_utils import timm_logits


def test_convnext_tiny_logits_equal_timm_after_import():
    torch.manual_seed(0)
    tm = timm.create_model("convnext_tiny", pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name.endswith("gamma"):  # layer scale 1e-6 would hide the blocks
                p.uniform_(0.5, 1.0)
            elif p.ndim == 1 and "norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0.0, 0.1)
    variables = models.load_torch_state_dict("convnext_tiny", tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    model = models.create("convnext_tiny", num_classes=10)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    theirs = timm_logits(tm, x)
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )
