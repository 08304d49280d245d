"""Native (qwix) int8 / fp8 execution vs the fake-quant path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from archjax.quant import FloatFormat, IntFormat, PerChannel, QuantRule, quantize_model
from archjax.quant.native import native, native_variables


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
        x = nn.relu(nn.Dense(16, name="fc")(x.mean(axis=(1, 2))))
        return nn.Dense(4, name="head")(x)


@pytest.fixture(scope="module")
def net():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    return x, jax.jit(_Net().init)(jax.random.key(1), x)


@pytest.mark.parametrize(
    "fmt, tol_steps",
    [(IntFormat(8), 1.0), (FloatFormat(4, mantissa_bits=3, finite_only=True), 1e-3)],
    ids=["int8", "fp8_e4m3fn"],
)
def test_native_matches_fake_quant_within_one_step(net, fmt, tol_steps):
    """qwix's granularity (per example / row activations, per channel weights) on both sides.

    Float32 matmuls run at full precision: on GPUs JAX's default lets them use TF32,
    whose rounding (~1e-4 here) is larger than an fp8 tolerance.
    """
    x, variables = net
    with jax.default_matmul_precision("float32"):
        _check_native_vs_fake_quant(x, variables, fmt, tol_steps)


def _check_native_vs_fake_quant(x, variables, fmt, tol_steps):
    rules = [
        QuantRule(pattern=".*", weight=fmt, activation=fmt, activation_granularity=PerChannel(0))
    ]
    fq = quantize_model(_Net(), rules)
    nmodel = native(fq)  # the rules of the fake-quant model
    nvars = native_variables(nmodel, variables, x)
    got = jax.jit(nmodel.apply)(nvars, x)
    want = jax.jit(fq.apply)(variables, x)
    step = float(jnp.max(jnp.abs(want))) / 127  # one int8 step of the logits
    assert float(jnp.max(jnp.abs(got - want))) <= tol_steps * step
    # Quantization does something: the float model is further away than the tolerance.
    ref = _Net().apply(variables, x)
    assert float(jnp.max(jnp.abs(want - ref))) > tol_steps * step * 0.1
    if isinstance(fmt, IntFormat):  # weights are stored as int8 codes, computed in int8
        kernel = nvars["params"]["conv"]["kernel"]
        assert jnp.dtype(jnp.int8) in {leaf.dtype for leaf in jax.tree.leaves(kernel)}
        assert "i8" in jax.jit(nmodel.apply).lower(nvars, x).as_text()


def test_formats_without_native_kernels_are_refused():
    with pytest.raises(ValueError, match="int4 has no native"):
        native(_Net(), [QuantRule(pattern=".*", weight=IntFormat(4))])
    with pytest.raises(ValueError, match="needs rules"):
        native(_Net())
