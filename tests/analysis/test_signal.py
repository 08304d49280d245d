"""block_statistics: per-block channel statistics (Signal Propagation Plots)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax import models
from archjax.analysis import block_statistics
from archjax.models.nfnet import signal_propagation


class _Shift(nn.Module):
    """A block whose output is its input plus a constant per channel."""

    shift: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        return x + self.shift * jnp.arange(x.shape[-1], dtype=x.dtype)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for i in (1, 2, 10):  # 10 after 2: numeric order, not string order
            x = _Shift(shift=float(i), name=f"stage1_block{i}")(x, train=train)
        return nn.BatchNorm(use_running_average=not train, name="bn")(x)


def test_statistics_match_a_numpy_oracle():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
    net = _Net()
    variables = net.init(jax.random.key(1), x)
    out = block_statistics(net, variables, x)
    assert out["blocks"] == ["stage1_block1", "stage1_block2", "stage1_block10"]
    y = np.asarray(x, np.float64)
    for i, name in enumerate(out["blocks"]):
        y = y + float(name.rsplit("block", 1)[1]) * np.arange(5)
        means = y.mean(axis=(0, 1, 2))
        np.testing.assert_allclose(out["avg_sq_mean"][i], np.mean(means**2), rtol=1e-5)
        np.testing.assert_allclose(out["avg_var"][i], y.var(axis=(0, 1, 2)).mean(), rtol=1e-5)


def test_nfnet_statistics_equal_its_own_sown_ones():
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
    model = models.create("nf_resnet26", stage_sizes=(2, 1), width_multiplier=1 / 16)
    variables = model.init(jax.random.key(1), x)
    ours = block_statistics(model, variables, x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    sown = signal_propagation(state["intermediates"])
    assert ours["blocks"] == ["stage1_block1", "stage1_block2", "stage2_block1"]
    np.testing.assert_allclose(ours["avg_var"], sown["avg_var"], rtol=1e-5)
    np.testing.assert_allclose(ours["avg_sq_mean"], sown["avg_sq_mean"], rtol=1e-5, atol=1e-8)


def test_batchnorm_uses_batch_statistics_in_train_mode():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 4, 4, 3))
    model = models.create("resnet50", stage_sizes=(1,), width_multiplier=1 / 16, num_classes=3)
    variables = model.init(jax.random.key(1), x)
    # The block's branch ends in BN; train mode normalizes it with the batch's statistics.
    train = block_statistics(model, variables, x, train=True)
    eval_ = block_statistics(model, variables, x, train=False)
    assert train["blocks"] == ["stage1_block1"]
    assert np.isfinite(train["avg_var"]).all() and train["avg_var"][0] != eval_["avg_var"][0]


def test_no_matching_block_names_the_pattern():
    x = jnp.ones((1, 2, 2, 1))
    net = _Net()
    with pytest.raises(ValueError, match="matching 'block_.*'"):
        block_statistics(net, net.init(jax.random.key(0), x), x, blocks="block_.*")
