"""RegNet: parameter counts and logits equal timm's after weight import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from archjax import models

from .timm_utils import randomize_batch_norms, timm_logits


@pytest.mark.parametrize("name", ["regnety_016"])
def test_logits_equal_timm_after_import(name):
    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False, num_classes=10).eval()
    # Non-trivial BN statistics and scales (timm zero-inits the last BN of each block).
    randomize_batch_norms(tm)
    variables = models.load_torch_state_dict(name, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    model = models.create(name, num_classes=10)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    theirs = timm_logits(tm, x)
    np.testing.assert_allclose(
        np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )


@pytest.mark.parametrize("name", ["regnetx_002", "regnety_002"])
def test_converter_gives_the_tree_init_gives(name):
    sd = timm.create_model(name, pretrained=False, num_classes=7).state_dict()
    variables = models.load_torch_state_dict(name, sd)
    model = models.create(name, num_classes=7)
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert jax.tree.structure(variables) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape


def test_converter_reports_extra_and_missing_keys():
    sd = dict(timm.create_model("regnetx_002", pretrained=False).state_dict())
    with pytest.raises(ValueError, match="not used by the converter.*extra.weight"):
        models.load_torch_state_dict("regnetx_002", {**sd, "extra.weight": torch.zeros(1)})
    del sd["s2.b1.downsample.bn.running_var"]
    with pytest.raises(ValueError, match="no key 's2.b1.downsample.bn.running_var'"):
        models.load_torch_state_dict("regnetx_002", sd)
