"""ViT: parameter counts and logits equal timm's after weight import."""

import jax
import numpy as np
import pytest
import timm
import torch

from archjax import models

from .timm_utils import timm_logits


def _randomize(tm):
    """Moves every LayerNorm / token parameter off its init, so that a swapped
    or missed tensor changes the logits."""
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1 or "token" in name:
                p.normal_(0.0, 0.1)


def test_vit_tiny_logits_equal_timm_after_import():
    torch.manual_seed(0)
    name = "vit_tiny_patch16_224"
    tm = timm.create_model(name, pretrained=False, num_classes=10, img_size=64).eval()
    _randomize(tm)
    variables = models.load_torch_state_dict(name, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    model = models.create(name, num_classes=10, image_size=64)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    theirs = timm_logits(tm, x)
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )


def test_converter_reports_unused_keys():
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    sd = dict(tm.state_dict())
    sd["blocks.0.ls1.gamma"] = torch.zeros(1)  # a LayerScale ViT is a different model
    with pytest.raises(ValueError, match="not used by the converter.*ls1.gamma"):
        models.load_torch_state_dict("vit_tiny_patch16_224", sd)
