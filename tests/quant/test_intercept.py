"""The one layer finder: scoped patching, and weights found by where they come from."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from archjax.layers.std_conv import ScaledStdConv
from archjax.quant import IntFormat, QuantRule, quantize_model
from archjax.quant.intercept import find_layers, intercept

PATCHED = [
    (jax.lax, "conv_general_dilated"),
    (jax.lax, "dot_general"),
    (jnp, "einsum"),
    (jnp, "dot"),
    (jnp, "matmul"),
]


def _attributes():
    return {(mod.__name__, name): getattr(mod, name) for mod, name in PATCHED}


class _Net(nn.Module):
    """A computed conv kernel, a square dense layer, attention-style einsums."""

    @nn.compact
    def __call__(self, x):
        h = ScaledStdConv(4, (3, 3), name="conv")(x)
        t = h.reshape(h.shape[0], -1, 4)
        att = jnp.einsum("bqc,bkc->bqk", t, t)
        y = jnp.einsum("bqk,bkc->bqc", att, t).mean(axis=1)  # [batch, 4]
        return nn.Dense(4, name="head")(y)


class _Raises(nn.Module):
    @nn.compact
    def __call__(self, x):
        nn.Dense(2, name="head")(x)
        raise ZeroDivisionError("inside the model")


def test_attributes_are_patched_only_inside_the_context():
    before = _attributes()
    with intercept(lambda op: op.call(*op.operands)):
        inside = _attributes()
    assert all(inside[k] is not before[k] for k in before)  # the context does patch
    assert _attributes() == before
    with pytest.raises(ZeroDivisionError), intercept(lambda op: op.call(*op.operands)):
        raise ZeroDivisionError
    assert all(v is before[k] for k, v in _attributes().items())


def test_attributes_are_restored_when_a_quantized_model_raises():
    before = _attributes()
    q = quantize_model(_Raises(), [QuantRule(pattern=".*", weight=IntFormat(8))])
    with pytest.raises(ZeroDivisionError, match="inside the model"):
        q.init(jax.random.key(0), jnp.ones((2, 3)))
    assert all(v is before[k] for k, v in _attributes().items())


def test_find_layers_classifies_operands_by_data_flow():
    # batch == fan_in == fan_out at the head: the shape says nothing about the role
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2))
    variables = jax.eval_shape(_Net().init, jax.random.key(1), x)
    layers = find_layers(lambda v, x: _Net().apply(v, x), variables, x, macs=True)
    roles = {layer.key: layer.operands for layer in layers}
    assert roles == {
        "conv:conv0": ("activation", "weight"),  # the kernel is computed from params
        ":einsum0": ("activation", "activation"),
        ":einsum1": ("activation", "activation"),
        "head:dot_general0": ("activation", "weight"),
    }
    macs = {layer.key: layer.macs for layer in layers}
    assert macs["head:dot_general0"] == 4 * 4 * 4
    assert macs["conv:conv0"] == 4 * 3 * 3 * 4 * (3 * 3 * 2)
    assert macs[":einsum0"] == 4 * 9 * 9 * 4
    # Ops outside a Flax module are not layers; nothing is intercepted afterwards.
    assert find_layers(lambda v, x: jnp.dot(x, x), {}, jnp.ones((2, 2))) == ()


def test_enclosing_context_sees_each_module_call_once_through_a_quantized_model():
    """The transform's throwaway trace of the float model is hidden from outer contexts."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 2))
    variables = jax.eval_shape(_Net().init, jax.random.key(1), x)

    def calls(model):
        seen = []
        with intercept(on_module=lambda module, args, out: seen.append(module.scope.path)):
            jax.eval_shape(lambda v: model.apply(v, x), variables)
        return seen

    q = quantize_model(_Net(), [QuantRule(pattern=".*", weight=IntFormat(8))])
    submodules = lambda paths: [p for p in paths if p]  # the root's own call(s) aside
    assert submodules(calls(q)) == submodules(calls(_Net())) == [("conv",), ("head",)]
