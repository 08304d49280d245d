"""quantize_model(model, rules): what is quantized, with which rule, and the quant_stats state."""

import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax.layers.std_conv import ScaledStdConv, standardize_kernel
from archjax.quant import (
    BinaryFormat,
    FloatFormat,
    IntFormat,
    PerChannel,
    QuantRule,
    calibrate_tensor,
    fake_quant,
    first_last_rules,
    is_quantized,
    layer_rules,
    match_rule,
    quant_rules,
    quantize_model,
    unquantized,
)
from archjax.quant.transform import quantized_weights

INT8, INT4 = IntFormat(bits=8), IntFormat(bits=4)


class _Net(nn.Module):
    """A dense layer, a weight-standardized conv and an attention-style einsum."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = ScaledStdConv(4, (3, 3), name="conv")(x)  # the kernel it uses is computed
        b, hh, ww, c = h.shape
        t = h.reshape(b, hh * ww, c)
        att = jnp.einsum("bqc,bkc->bqk", t, t)  # two activations
        y = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(att), t).mean(axis=1)
        return nn.Dense(3, name="head")(y)


@pytest.fixture(scope="module")
def net():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables = jax.jit(_Net().init)(jax.random.key(1), x)
    return x, variables


def test_rules_first_match_wins_and_first_last_policy():
    rules = first_last_rules(INT8, INT4, activation=INT8)
    assert match_rule(rules, "stem_conv").weight == INT8
    assert match_rule(rules, "head").weight == INT8
    assert match_rule(rules, "stage1_block1/conv1").weight == INT4
    assert match_rule(rules, "stage1_block1/conv1").activation == INT8
    assert match_rule([QuantRule(pattern="^x$")], "head") is None


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"pattern": "("}, "pattern"),
        ({"pattern": ".*", "weight_calibration": "minmax"}, "weight_calibration"),
        ({"pattern": ".*", "ste": "magic"}, "ste"),
    ],
)
def test_bad_rule_raises(kw, msg):
    with pytest.raises(ValueError, match=msg):
        QuantRule(**kw)


def test_bad_quantize_arguments_raise():
    with pytest.raises(ValueError, match="QuantRule"):
        quantize_model(_Net(), ["head"])
    with pytest.raises(ValueError, match="momentum"):
        quantize_model(_Net(), [], momentum=1.0)


def test_float_rules_are_the_identity_and_params_tree_is_unchanged(net):
    x, variables = net
    q = quantize_model(_Net(), [QuantRule(pattern=".*")])  # no format: nothing quantized
    assert is_quantized(q) and not is_quantized(unquantized(q))
    assert quant_rules(q) == (QuantRule(pattern=".*"),)
    qvars = jax.jit(q.init)(jax.random.key(1), x)
    chex.assert_trees_all_equal(qvars["params"], variables["params"])
    chex.assert_trees_all_equal(q.apply(variables, x), _Net().apply(variables, x))


@pytest.mark.parametrize("jit", [False, True])
def test_dense_and_std_conv_use_fake_quantized_kernels(net, jit):
    """Weight-only int4: the model equals the float model run on fake-quantized kernels."""
    x, variables = net
    rules = [QuantRule(pattern="^(head|conv)$", weight=INT4)]
    q = quantize_model(_Net(), rules)
    apply = jax.jit(q.apply) if jit else q.apply
    got = apply(variables, x)

    # Reference: quantize the kernels the layers actually use, by hand.
    p = variables["params"]
    k = p["conv"]["kernel"]
    w_conv = standardize_kernel(
        k, eps=1e-6, gain=p["conv"]["gain"], scale=np.prod(k.shape[:-1]) ** -0.5
    )
    gran = PerChannel(-1)
    fq = lambda w: fake_quant(
        w, INT4, calibrate_tensor(w, INT4, granularity=gran), granularity=gran
    )
    h = (
        jax.lax.conv_general_dilated(
            x, fq(w_conv), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + p["conv"]["bias"]
    )
    b, hh, ww, c = h.shape
    t = h.reshape(b, hh * ww, c)
    att = jnp.einsum("bqc,bkc->bqk", t, t)
    y = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(att), t).mean(axis=1)
    want = y @ fq(p["head"]["kernel"]) + p["head"]["bias"]
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
    assert not np.allclose(got, _Net().apply(variables, x), atol=1e-4)


def test_einsum_operands_are_activations(net):
    x, variables = net
    q = quantize_model(_Net(), [QuantRule(pattern="^$", activation=INT4)])  # root: the einsums
    layers = layer_rules(q, x)
    assert [k for k, r in layers.items() if r is not None] == [":einsum0", ":einsum1"]
    qvars = q.init(jax.random.key(1), x)
    assert set(qvars["quant_stats"]) == {"einsum0_lhs", "einsum0_rhs", "einsum1_lhs", "einsum1_rhs"}
    assert not np.allclose(q.apply(variables, x), _Net().apply(variables, x), atol=1e-4)


def test_unmatched_rule_warns_with_layer_paths(net):
    x, _ = net
    q = quantize_model(_Net(), [QuantRule(pattern="^stage9", weight=INT8), QuantRule(pattern=".*")])
    with pytest.warns(UserWarning, match=r"'\^stage9' matches no layer.*'conv'.*'head'"):
        q.init(jax.random.key(0), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every rule matches: no warning
        quantize_model(_Net(), [QuantRule(pattern="head", weight=INT8)]).init(jax.random.key(0), x)


def test_quant_stats_static_after_calibration(net):
    """Without quant_stats: dynamic scales; after a mutable pass: the batch's scale, stored."""
    x, variables = net
    q = quantize_model(_Net(), [QuantRule(pattern="head", activation=INT8)])
    qvars = q.init(jax.random.key(1), x)
    assert int(qvars["quant_stats"]["head"]["dot_general0_lhs"]["count"]) == 0
    # count 0: the batch's own (dynamic) scale is used, as without the collection
    chex.assert_trees_all_close(q.apply(qvars, x), q.apply(variables, x))
    _, upd = q.apply(variables, x, mutable=["quant_stats"])
    stat = upd["quant_stats"]["head"]["dot_general0_lhs"]
    assert int(stat["count"]) == 1
    # Static: a calibrated scale is used even for a batch with a different range.
    calibrated = {**variables, **upd}
    x2 = 10.0 * x
    assert not np.allclose(q.apply(calibrated, x2), q.apply(variables, x2), atol=1e-4)


@pytest.mark.parametrize(
    "fmt", [FloatFormat(exponent_bits=4, mantissa_bits=3, finite_only=True), BinaryFormat()]
)
def test_other_formats_run_and_resnet_rules_assign_first_last(fmt):
    model = quantize_model(
        models.create("resnet8", num_classes=3, width_multiplier=0.25), first_last_rules(INT8, fmt)
    )
    x = jnp.ones((1, 8, 8, 1))
    layers = layer_rules(model, x, train=False)
    assert layers["stem_conv:conv0"].weight == INT8 and layers["head:dot_general0"].weight == INT8
    assert {r.weight for k, r in layers.items() if not k.startswith(("stem", "head"))} == {fmt}


def test_learned_scales_are_params_with_gradients(net):
    """learned_scale=True: LSQ weight scales and PACT clips live in params and train."""
    x, variables = net
    rule = QuantRule(pattern="head", weight=INT4, activation=IntFormat(8, signed=False),
                     learned_scale=True)  # fmt: skip
    q = quantize_model(_Net(), [rule])
    qvars = jax.jit(q.init)(jax.random.key(1), x)
    head = qvars["params"]["head"]
    assert {"dot_general0_rhs_weight_scale", "dot_general0_lhs_act_clip"} <= set(head)
    chex.assert_shape(head["dot_general0_rhs_weight_scale"], (1, 3))  # per output channel

    grads = jax.jit(jax.grad(lambda p: jnp.sum(q.apply({"params": p}, x) ** 2)))(qvars["params"])
    assert float(jnp.abs(grads["head"]["dot_general0_rhs_weight_scale"]).sum()) > 0
    assert float(jnp.abs(grads["head"]["dot_general0_lhs_act_clip"])) > 0


class _Square(nn.Module):
    """A dense layer whose 2-D input has the kernel's shape (batch == fan_in == fan_out)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(x.shape[-1], name="head")(x)


@pytest.mark.parametrize("jit", [False, True])
def test_activation_shaped_like_a_weight_is_an_activation(jit):
    """The input is quantized as an activation (per tensor, quant_stats), the kernel as a weight."""
    n = 6
    x = jax.random.normal(jax.random.key(0), (n, n))
    variables = _Square().init(jax.random.key(1), x)
    rule = QuantRule(pattern="head", weight=INT4, activation=INT8)
    q = quantize_model(_Square(), [rule])
    assert set(q.init(jax.random.key(1), x)["quant_stats"]["head"]) == {"dot_general0_lhs"}
    assert quantized_weights(q, x) == {"head:dot_general0": (("head", "kernel"), rule)}

    apply = jax.jit(q.apply) if jit else q.apply
    got = apply(variables, x)
    p = variables["params"]["head"]
    w_gran = PerChannel(-1)
    w = fake_quant(p["kernel"], INT4, calibrate_tensor(p["kernel"], INT4, granularity=w_gran),
                   granularity=w_gran)  # fmt: skip
    a = fake_quant(x, INT8, calibrate_tensor(x, INT8))  # per tensor, the batch's own scale
    chex.assert_trees_all_close(got, a @ w + p["bias"], atol=1e-5, rtol=1e-5)


class _ComputedKernel(nn.Module):
    """A dot whose weight is computed from two parameters (as in σReparam)."""

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 3))
        gain = self.param("gain", nn.initializers.ones, ())
        return jnp.dot(x, gain * kernel)


def test_computed_kernel_is_a_weight():
    x = jax.random.normal(jax.random.key(0), (2, 5))
    rule = QuantRule(pattern=".*", weight=INT4, activation=INT8)
    q = quantize_model(_ComputedKernel(), [rule])
    qvars = q.init(jax.random.key(1), x)
    assert set(qvars["quant_stats"]) == {"dot0_lhs"}
    assert quantized_weights(q, x) == {":dot0": (None, rule)}  # computed: no parameter path
