"""Every registered model, quantized w4a8 without changing its code: init + apply + grad.

Parameterized over the registry (issue 4, acceptance 4). As in
tests/models/test_all_models.py, names whose tiny networks are identical share a
test. Each group is

- traced (``jax.jit(...).trace`` of init + train-mode forward + gradient): the
  transform intercepts every layer of every model with the rule and the gradient tree
  matches the parameters;
- compiled (with tests/conftest.py's fast-compile XLA flags) and run: values and
  gradients are finite and reach the first layer and the head.

``ARCHJAX_QUANT_ALL_MODELS=0`` compiles only one group per family and block type
(``COMPILED``), for quick local runs; CI compiles every group.
"""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.models as models
from archjax.quant import IntFormat, QuantRule, layer_rules, quantize_model
from tests.registry_groups import GROUPS
from tests.registry_groups import tiny as _tiny

W4A8 = [QuantRule(pattern=".*", weight=IntFormat(bits=4), activation=IntFormat(bits=8))]
# One group per family class and block type (the smallest member of each).
COMPILED = {
    "convnext_tiny", "mixer_s16_224", "nf_resnet26", "regnetx_002", "resnet20", "resnet50",
    "vgg11_bn", "vit_tiny_patch16_224",
}  # fmt: skip
ALL = os.environ.get("ARCHJAX_QUANT_ALL_MODELS", "1") != "0"


X = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))


def _run(model):
    def run(key):
        variables = model.init(key, X, train=False)
        float_vars = {k: v for k, v in variables.items() if k != "quant_stats"}

        def loss(params):
            logits, _ = model.apply(
                {**float_vars, "params": params},
                X,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            )
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return variables, value, logits, grads

    return run


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_every_name_is_covered():
    assert sorted(n for group in GROUPS for n in group) == models.list_models()
    assert set(models.list_models()) >= COMPILED


@pytest.mark.parametrize("names", GROUPS, ids=lambda g: "+".join(g))
def test_every_registered_model_quantized_w4a8(names):
    model = quantize_model(_tiny(names[0]), W4A8)
    key = jax.random.key(0, impl="rbg")
    # One trace serves the shape checks and the compile.
    traced = jax.jit(_run(model)).trace(key)
    variables, value, logits, grads = traced.out_info
    assert "quant_stats" in variables  # activation calibration state exists for every model
    chex.assert_shape(logits, (2, 5))
    chex.assert_trees_all_equal_shapes(grads, variables["params"])
    # Every conv, dense and einsum layer was intercepted and got the rule.
    layers = layer_rules(model, X, train=False)
    assert layers and all(rule is W4A8[0] for rule in layers.values())
    if not (ALL or COMPILED & set(names)):
        return
    compiled = traced.lower().compile()
    variables, value, logits, grads = compiled(key)
    chex.assert_tree_all_finite((value, logits, grads))
    # The straight-through estimator lets gradient reach the first layer and the head.
    first = next(iter(layers)).split(":")[0].split("/")
    for path in (first, ["head"]):
        assert np.abs(np.asarray(_at(grads, path)["kernel"])).sum() > 0, path
