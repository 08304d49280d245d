"""The bf16 policy inside the jitted step: bf16 convolutions, float32 master weights."""

import jax
import jax.numpy as jnp
import optax
import pytest

from archjax import models
from archjax.train import Recipe, create_train_state, get_policy, make_train_step


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


def test_bf16_policy_dtypes_in_jitted_step():
    policy = get_policy("bf16")
    model = models.create(
        "resnet8", num_classes=10, width_multiplier=0.25, dtype=policy.compute_dtype
    )
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(model, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1))
    step = jax.jit(make_train_step(model, tx, recipe=Recipe(precision="bf16")))
    batch = {"image": jnp.ones((4, 8, 8, 1)), "label": jnp.arange(4)}
    jaxpr = jax.make_jaxpr(step)(state, batch)
    convs = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    dots = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(convs) >= 3 * 7  # forward + two backward convs per layer
    for eqn in convs + dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
    # Output dtypes of the same step (abstract evaluation: no second compilation).
    new_state, metrics = jax.eval_shape(step, state, batch)
    for leaf in jax.tree.leaves((new_state.params, new_state.opt_state, new_state.batch_stats)):
        assert leaf.dtype == jnp.float32
    assert metrics["loss"].dtype == jnp.float32


def test_unknown_policy_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown precision 'fp16'.*Choices: bf16, fp32"):
        get_policy("fp16")
