"""Cost report against a hand computation (ResNet-50, w4a4 body, w8a8 stem and head)."""

import math

import jax
import jax.numpy as jnp
import pytest

from archjax import models
from archjax.quant import IntFormat
from archjax.quant.cost import report
from archjax.quant.rules import QuantRule

INT8, INT4 = IntFormat(8), IntFormat(4)
FIRST_LAST = [
    QuantRule(pattern=r"^(stem_conv|head)$", weight=INT8, activation=INT8),
    QuantRule(pattern=".*", weight=INT4, activation=INT4),
]


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _resnet50_output_size(path: tuple[str, ...]) -> int:
    """Output height (= width) of each ResNet-50 (v1.5) conv at 224x224, by hand.

    Stem: 7x7/2 conv (112) then 3x3/2 max-pool (56). Stage s works at 56 / 2**(s-1);
    in the first block of stages 2-4 the 1x1 conv1 still runs at the previous
    resolution and the stride sits in the 3x3 conv2 (and the downsample conv).
    """
    stem = _conv_out(224, 7, 2, 3)
    if path[0] == "stem_conv":
        return stem
    pooled = _conv_out(stem, 3, 2, 1)
    stage, block = (int(s) for s in path[0].removeprefix("stage").split("_block"))
    resolution = pooled // 2 ** (stage - 1)
    if stage > 1 and block == 1 and path[1] == "conv1":
        return resolution * 2
    return resolution


@pytest.fixture(scope="module")
def resnet50():
    return models.create("resnet50")


def test_resnet50_report_matches_hand_computation(resnet50):
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = jax.eval_shape(lambda v: resnet50.init(jax.random.key(0), v), x)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(params)
    total_params = sum(math.prod(leaf.shape) for _, leaf in leaves)

    macs = bops = kernel_params = 0
    size_bits = 0
    n_layers = 0
    for key_path, leaf in leaves:
        path = tuple(k.key for k in key_path)
        if path[-1] != "kernel":
            continue
        n_layers += 1
        n = math.prod(leaf.shape)
        # conv: every output pixel costs kh * kw * cin * cout MACs; the dense head runs once.
        layer_macs = _resnet50_output_size(path[:-1]) ** 2 * n if leaf.ndim == 4 else n
        bits = 8 if path[0] in ("stem_conv", "head") else 4
        macs += layer_macs
        bops += layer_macs * bits * bits
        kernel_params += n
        size_bits += n * bits
    size_bits += (total_params - kernel_params) * 32  # biases and BatchNorm at 32 bits

    r = report(resnet50, FIRST_LAST, (1, 224, 224, 3))
    assert len(r.layers) == n_layers == 54  # 53 convolutions + the classifier
    assert r.macs == macs
    assert r.bops == bops
    assert r.size_bytes == size_bits / 8
    assert r.weight_params + r.other_params == total_params
    # Literature check: ResNet-50 has 25,557,032 parameters and ~4.09 GMACs at 224.
    assert total_params == 25_557_032
    assert abs(macs / 4.09e9 - 1) < 0.01
    by_path = {layer.path: layer for layer in r.layers}
    assert (by_path["stem_conv"].weight_bits, by_path["head"].activation_bits) == (8, 8)
    assert by_path["stage4_block1/downsample_conv"].weight_bits == 4
    assert "stage4_block3/conv3" in str(r)


def test_unmatched_layers_and_attention_count_32_bits():
    model = models.create("vit_tiny_patch16_224", **models.tiny_kwargs("vit_tiny_patch16_224"))
    rules = [QuantRule(pattern=r"attn", weight=INT4, activation=INT8)]
    r = report(model, rules, (2, 32, 32, 3))
    kinds = {layer.kind for layer in r.layers}
    assert kinds == {"conv", "dense", "matmul"}
    for layer in r.layers:
        if "attn" not in layer.path:
            assert (layer.weight_bits, layer.activation_bits) == (32, 32)
        elif layer.kind == "matmul":  # q @ k and p @ v: two activations, no weights
            assert (layer.params, layer.weight_bits, layer.activation_bits) == (0, 8, 8)
        else:
            assert (layer.weight_bits, layer.activation_bits) == (4, 8)
    float_report = report(model, [], (2, 32, 32, 3))
    n_params = sum(
        math.prod(p.shape)
        for p in jax.tree_util.tree_leaves(
            jax.eval_shape(
                lambda v: model.init(jax.random.key(0), v),
                jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
            )["params"]
        )
    )
    assert float_report.size_bytes == 4 * n_params
    assert float_report.bops == 32 * 32 * float_report.macs
    with pytest.raises(ValueError, match="batch axis"):
        report(model, [], (32,))
