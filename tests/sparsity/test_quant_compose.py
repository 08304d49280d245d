"""Sparsity x quantization: a 4-bit, 80%-sparse model trains with its zeros kept."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import archjax.quant as quant
import archjax.sparsity as sp


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(4, name="head")(nn.relu(nn.Dense(32, name="hidden")(x)))


def test_quantized_sparse_model_trains_and_costs_both():
    rules = [quant.QuantRule(pattern=".*", weight=quant.IntFormat(bits=4))]
    qmodel = quant.quantize_model(_Mlp(), rules)
    x = jax.random.normal(jax.random.key(0), (8, 16))
    variables = qmodel.init(jax.random.key(1), x)
    params = variables["params"]
    flags = sp.prunable(params, [sp.PruneRule(pattern="kernel$")])
    mask = sp.global_magnitude(params, 0.8, prunable=flags)
    tx = sp.keep_masked(optax.adamw(1e-2, weight_decay=0.1), mask)
    rest = {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def step(params, state):
        loss = lambda p: jnp.mean(qmodel.apply({"params": p, **rest}, x) ** 2)  # noqa: E731
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(2):
        params, state = step(params, state)
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
        assert (np.asarray(p)[~np.asarray(m)] == 0).all()
    # The symmetric 4-bit grid has an exact zero, so the quantized model is as sparse.
    k = params["hidden"]["kernel"]
    q = quant.fake_quant(
        k, quant.IntFormat(bits=4), quant.calibrate_tensor(k, quant.IntFormat(bits=4))
    )
    assert (np.asarray(q)[~np.asarray(mask["hidden"]["kernel"])] == 0).all()

    # Cost: bits per value from the quantization rules (module path = leaf path minus name).
    def bits(path):
        rule = quant.match_rule(rules, path.rsplit("/", 1)[0])
        return rule.weight.bits if path.endswith("kernel") else 32

    cost = sp.sparse_cost(params, mask, bits=bits)
    kernels = 16 * 32 + 32 * 4
    kept = round(0.2 * kernels)
    assert cost.nonzero == kept + 32 + 4
    assert cost.sparse_bits == kept * 4 + kernels + (32 + 4) * 32  # values + bitmap + biases

    # BOPs: every layer's MACs x 4 weight bits x 32 activation bits, scaled by density.
    report = quant.report(_Mlp(), rules, (1, 16))
    assert sp.sparse_bops(report, jax.tree.map(lambda k: k | True, mask)) == report.bops
    density = {
        "hidden": float(mask["hidden"]["kernel"].mean()),
        "head": float(mask["head"]["kernel"].mean()),
    }
    want = sum(layer.bops * density[layer.path] for layer in report.layers)
    assert sp.sparse_bops(report, mask) == pytest.approx(want)
    assert sp.sparse_bops(report, mask) < 0.5 * report.bops
