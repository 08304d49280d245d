"""A tiny BatchNorm-free classifier for exact gradient identities."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest


class TinyMLP(nn.Module):
    """Flatten -> Dense(16) -> dropout-free ReLU -> Dense(num_classes); no BatchNorm."""

    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        x = nn.relu(nn.Dense(16, dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


@pytest.fixture(scope="session")
def tiny_mlp():
    return TinyMLP()


@pytest.fixture(scope="session")
def batch16():
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.normal(size=(16, 8, 8, 1)).astype(np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, size=16).astype(np.int32)),
    }


def init_state(model, tx, seed=0):
    from archjax.train import create_train_state

    return create_train_state(model, tx, rng=jax.random.key(seed), input_shape=(1, 8, 8, 1))
