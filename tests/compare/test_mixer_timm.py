"""MLP-Mixer: parameter counts and logits equal timm's after weight import."""

import jax
import numpy as np
import timm
import torch

from archjax import models

from .timm_utils import timm_logits


def test_mixer_s32_logits_equal_timm_after_import():
    torch.manual_seed(0)
    name = "mixer_s32_224"
    tm = timm.create_model(name, pretrained=False, num_classes=10, img_size=64).eval()
    with torch.no_grad():  # LayerNorms off their init, so a swapped tensor shows
        for pname, p in tm.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5) if pname.endswith("weight") else p.normal_(0.0, 0.1)
    variables = models.load_torch_state_dict(name, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    model = models.create(name, num_classes=10, image_size=64)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    theirs = timm_logits(tm, x)
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )
