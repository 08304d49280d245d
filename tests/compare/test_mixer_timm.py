"""MLP-Mixer: parameter counts and logits equal timm's after weight import."""

import jax
import jax.numpy as jnp
import numpy as np
import timm
import torch

from archjax import models


def test_param_count_equals_timm():
    tm = timm.create_model("mixer_b16_224", pretrained=False)
    want = sum(p.numel() for p in tm.parameters())
    variables = jax.eval_shape(
        lambda: models.create("mixer_b16_224").init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == want


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
    with torch.no_grad():
        theirs = tm(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )
