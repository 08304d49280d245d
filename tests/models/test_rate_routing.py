"""Each dropout / stochastic-depth rate of a model reaches the layers it names.

ViT and Mixer build their blocks from several same-typed float knobs
(``dropout_rate``, ``attention_dropout_rate``, ``drop_path_rate``); passed in the
wrong order they would still run. Distinct values per knob make a swap visible.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import archjax.models as models
from archjax.layers import DropPath

X = jnp.zeros((1, 32, 32, 3))


def _rates(model):
    """``{module path: rate}`` of every Dropout and DropPath called in a train-mode init."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Dropout | DropPath):
            seen["/".join(module.scope.path)] = module.rate
        return next_fun(*args, **kwargs)

    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(rngs, X, train=True))
    return seen


def test_vit_rates():
    model = models.create(
        "vit_tiny_patch16_224", depth=2, embed_dim=32, num_heads=2, image_size=32,
        dropout_rate=0.1, attention_dropout_rate=0.2, drop_path_rate=0.3,
    )  # fmt: skip
    block = {"attn/Dropout_0": 0.2, "attn/Dropout_1": 0.1, "mlp/Dropout_0": 0.1}
    assert _rates(model) == {
        "Dropout_0": 0.1,
        **{f"block0/{k}": v for k, v in block.items()},
        **{f"block1/{k}": v for k, v in block.items()},
        "block0/DropPath_0": 0.0,
        "block1/DropPath_0": 0.3,
    }


@pytest.mark.parametrize("dropout,drop_path", [(0.1, 0.3), (0.3, 0.1)])
def test_mixer_rates(dropout, drop_path):
    model = models.create(
        "mixer_s16_224", depth=2, embed_dim=32, image_size=32,
        dropout_rate=dropout, drop_path_rate=drop_path,
    )  # fmt: skip
    assert _rates(model) == {
        **{
            f"block{i}/{m}/Dropout_0": dropout
            for i in (0, 1)
            for m in ("mlp_tokens", "mlp_channels")
        },
        "block0/DropPath_0": 0.0,
        "block1/DropPath_0": drop_path,
    }


def test_convnext_drop_path_rises_over_all_blocks():
    model = models.create("convnext_tiny", depths=(1, 1, 1, 1), width_multiplier=1 / 8,
                          drop_path_rate=0.3)  # fmt: skip
    got = _rates(model)
    assert list(got) == [f"stage{i}_block0/DropPath_0" for i in range(4)]
    assert got["stage0_block0/DropPath_0"] == 0.0
    assert got["stage3_block0/DropPath_0"] == pytest.approx(0.3)
