"""Export: packed codes + scales in an Orbax checkpoint; reloading gives identical outputs."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax.quant import (
    MXFP4,
    MXFP6_E2M3,
    MXINT8,
    BinaryFormat,
    FloatFormat,
    IntFormat,
    NF4Format,
    QuantRule,
    calibrate_model,
    calibrate_tensor,
    fake_quant,
    first_last_rules,
    quantize_model,
)
from archjax.quant.export import export, load, pack, unpack

INT8, INT4 = IntFormat(bits=8), IntFormat(bits=4)
FP4 = FloatFormat(2, mantissa_bits=1, finite_only=True, has_nan=False)


@pytest.mark.parametrize("bits, offset", [(1, 0), (2, 2), (4, 8)])
def test_pack_roundtrip(bits, offset):
    codes = np.random.default_rng(0).integers(-offset, 2**bits - offset, size=(3, 5, 7))
    packed = pack(codes.astype(np.int8), bits, offset)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack(packed, bits, codes.shape, np.int8, offset), codes)


@pytest.mark.parametrize(
    "rules",
    [
        first_last_rules(INT8, INT4, activation=INT8),
        first_last_rules(INT8, FP4),
    ],
    ids=["w4a8", "fp4"],
)
def test_export_reload_gives_identical_outputs(tmp_path, rules):
    model = quantize_model(models.create("resnet8", num_classes=3, width_multiplier=0.25), rules)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(1))
    variables = calibrate_model(model, variables, [x])
    meta = export(model, variables, str(tmp_path / "ckpt"), x, train=False)
    body = meta["layers"]["stage1_block1/conv1/kernel"]
    w = variables["params"]["stage1_block1"]["conv1"]["kernel"]
    expected_bytes = -(-w.size * rules[-1].weight.bits // 8)
    if body["packed"]:  # 4-bit codes take half a byte each
        assert body["bytes"] == expected_bytes
    model2, variables2 = load(model, str(tmp_path / "ckpt"))
    want = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
    got = jax.jit(lambda v: model2.apply(v, x, train=False))(variables2)
    chex.assert_trees_all_equal(got, want)


def test_export_refuses_computed_kernels(tmp_path):
    model = quantize_model(models.create("nf_resnet26", **models.tiny_kwargs("nf_resnet26")),
                     [QuantRule(pattern=".*", weight=INT8)])  # fmt: skip
    x = np.zeros((1, 16, 16, 3), np.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    with pytest.raises(ValueError, match="computed kernels"):
        export(model, variables, str(tmp_path / "ckpt"), x, train=False)


class _Mlp(nn.Module):
    """Kernels [64, 64] and [64, 32]: their input axis holds whole NF4 / MX blocks."""

    @nn.compact
    def __call__(self, x):
        hidden = nn.relu(nn.Dense(64, name="Dense_0")(x))
        return nn.Dense(32, name="Dense_1")(hidden)


@pytest.mark.parametrize(
    "fmt, packed",
    [(NF4Format(), True), (MXFP4, True), (MXFP6_E2M3, False), (MXINT8, False)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_block_formats_through_rules_and_export(tmp_path, fmt, packed):
    """A QuantRule with NF4 / MX weights fake-quantizes the kernels; export packs 4-bit codes."""
    rules = [QuantRule(pattern=".*", weight=fmt, weight_granularity=fmt.weight_granularity)]
    model = quantize_model(_Mlp(), rules)
    x = jax.random.normal(jax.random.key(0), (4, 64))
    variables = model.init(jax.random.key(1), x)
    params = variables["params"]

    def by_hand(k):
        qp = calibrate_tensor(k, fmt, granularity=fmt.weight_granularity)
        return fake_quant(k, fmt, qp, granularity=fmt.weight_granularity)

    h = jax.nn.relu(x @ by_hand(params["Dense_0"]["kernel"]) + params["Dense_0"]["bias"])
    want = h @ by_hand(params["Dense_1"]["kernel"]) + params["Dense_1"]["bias"]
    got = model.apply(variables, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    meta = export(model, variables, str(tmp_path / "ckpt"), x)
    layer = meta["layers"]["Dense_0/kernel"]
    assert (layer["format"], layer["packed"]) == (fmt.name, packed)
    assert layer["bytes"] == 64 * 64 * (fmt.bits if packed else 8) // 8
    model2, variables2 = load(model, str(tmp_path / "ckpt"))
    chex.assert_trees_all_equal(model2.apply(variables2, x), got)


def test_export_keeps_levels_unpacked(tmp_path):
    """Binary weights are levels in {-1, 1}, not bit patterns: stored as int8, reloaded exactly."""
    rules = [QuantRule(pattern=".*", weight=BinaryFormat())]
    model = quantize_model(_Mlp(), rules)
    x = jnp.ones((2, 64))
    variables = model.init(jax.random.key(1), x)
    meta = export(model, variables, str(tmp_path / "ckpt"), x)
    assert not meta["layers"]["Dense_1/kernel"]["packed"]
    model2, variables2 = load(model, str(tmp_path / "ckpt"))
    chex.assert_trees_all_equal(model2.apply(variables2, x), model.apply(variables, x))
