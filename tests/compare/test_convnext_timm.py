"""ConvNeXt: parameter counts and logits equal timm's after weight import."""

import jax
import jax.numpy as jnp
import numpy as np
import timm
import torch

from archjax import models


def test_param_count_equals_timm():
    tm = timm.create_model("convnext_tiny", pretrained=False)
    want = sum(p.numel() for p in tm.parameters())
    variables = jax.eval_shape(
        lambda: models.create("convnext_tiny").init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == want


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
    with torch.no_grad():
        theirs = tm(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )
