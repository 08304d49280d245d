"""The ViT supernet: extracted children, exact costs, the sandwich step, bad spaces."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archjax import models, nas, parallel, quant
from archjax.models.vit import ViT
from archjax.train import create_train_state, jit_train_step

SPACE = nas.ViTSpace(depths=(1, 2), widths=(8, 12), heads=(2, 4), mlp_ratios=(1.0, 2.0),
                     resolutions=(4, 8), patch_size=2)  # fmt: skip
NET = nas.SuperViT(SPACE)


@functools.cache
@jax.jit
def _variables():
    """Supernet variables with every parameter perturbed (LayerNorms and biases too)."""
    v = NET.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    leaves, tree = jax.tree.flatten(v)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)


@functools.cache
def _supernet_apply():
    return jax.jit(lambda v, x, child: NET.apply(v, x, child))


def _archs():
    rng = np.random.default_rng(0)
    fixed = [
        SPACE.largest(),
        SPACE.smallest(),
        nas.ViTArch(depth=2, width=8, heads=4, mlp_ratio=2.0, resolution=8),
    ]
    return fixed + [SPACE.sample(rng) for _ in range(2)]


def test_extracted_children_equal_the_supernet_child():
    for arch in _archs():
        r = arch.resolution
        x = jax.random.normal(jax.random.key(2), (4, r, r, 1))
        model, child = nas.extract(SPACE, _variables(), arch)
        assert isinstance(model, ViT) and (model.embed_dim, model.num_heads, model.depth) \
            == (arch.width, arch.heads, arch.depth)  # fmt: skip
        # A standalone model: its own parameter shapes, nothing of larger blocks or grids.
        init = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
        assert jax.tree.map(jnp.shape, child) == jax.tree.map(jnp.shape, init)
        expected = _supernet_apply()(_variables(), x, SPACE.encode(arch))
        # Equal up to float summation order (zero channels and heads added).
        got = jax.jit(model.apply)(child, x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_cost_is_exact():
    for arch in _archs()[:3]:
        model, shape = SPACE.child(arch), (1, arch.resolution, arch.resolution, 1)
        cost = SPACE.cost(arch, channels=1)
        assert cost["params"] == models.count_params(model, shape)
        assert cost["macs"] == quant.report(model, [], shape).macs


def test_inactive_weights_get_no_gradient():
    arch = SPACE.smallest()  # one block, width 8 of 12, hidden 8 of 24
    x = jnp.ones((2, 4, 4, 1))
    loss = lambda p: NET.apply({"params": p}, x, SPACE.encode(arch)).sum()
    grads = jax.jit(jax.grad(loss))(_variables()["params"])
    assert all(jnp.all(g == 0) for g in jax.tree.leaves(grads["block1"]))  # gated off
    fc1 = grads["block0"]["mlp"]["fc1"]["kernel"]
    assert jnp.all(fc1[8:] == 0) and jnp.all(fc1[:, 8:] == 0) and jnp.any(fc1[:8, :8] != 0)
    assert jnp.all(grads["head"]["kernel"][8:] == 0)


def test_sandwich_step_trains_the_vit_supernet_and_search_scores_its_children():
    tx = optax.adam(1e-2)
    mesh = parallel.make_mesh(1)
    state = create_train_state(NET, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1), mesh=mesh)
    assert not state.batch_stats  # no BatchNorm: nothing to recalibrate
    step = jit_train_step(nas.make_sandwich_step(NET, tx, num_random=1, conflict=True),
                          mesh=mesh, state=state)  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, size=16).astype(np.int32)}  # fmt: skip
    before = jax.device_get(state.params["block0"]["mlp"]["fc1"]["kernel"])  # donated below
    losses = []
    for _ in range(3):
        state, m = step(state, parallel.shard_batch(batch, mesh))
        losses.append(float(m["loss"]))
        assert -1.0 <= float(m["grad_cosine"]) <= 1.0 and np.isfinite(float(m["loss_smallest"]))
    assert losses[-1] < losses[0]  # the same batch three times: the largest child fits it
    assert not np.allclose(state.params["block0"]["mlp"]["fc1"]["kernel"], before)
    # The search's evaluator scores a child as its extracted model does.
    variables = {"params": jax.device_get(state.params)}
    evaluate = nas.make_evaluator(NET, variables, images=batch["image"], labels=batch["label"],
                                  calibration=batch["image"], batch_size=16)  # fmt: skip
    arch = nas.ViTArch(depth=2, width=8, heads=2, mlp_ratio=1.0, resolution=8)
    model, child = nas.recalibrate(SPACE, variables, arch, [batch])
    logits = jax.jit(model.apply)(child, batch["image"])
    got = evaluate(arch)
    assert got["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == batch["label"])))
    loss = -jax.nn.log_softmax(logits)[np.arange(16), batch["label"]].mean()
    assert got["loss"] == pytest.approx(float(loss), rel=1e-4)


def test_bad_spaces_and_archs_name_the_problem():
    with pytest.raises(ValueError, match=r"^ViTSpace.heads is an empty choice"):
        nas.ViTSpace(heads=())
    with pytest.raises(ValueError, match="widths has 12, not divisible by heads 8"):
        nas.ViTSpace(widths=(8, 12), heads=(2, 8))
    with pytest.raises(ValueError, match="resolutions has 7, not a multiple of patch_size 2"):
        nas.ViTSpace(resolutions=(7,))
    too_wide = nas.ViTArch(depth=1, width=16, heads=2, mlp_ratio=1.0, resolution=8)
    with pytest.raises(ValueError, match=r"^arch.width = 16 \(above the supernet's\)"):
        nas.extract(SPACE, _variables(), too_wide)
    with pytest.raises(ValueError, match=r"^search space width = 16 \(above the supernet's 12\)"):
        nas.check_subspace(dataclasses.replace(SPACE, widths=(8, 16)), SPACE)
    with pytest.raises(ValueError, match="SuperViT expects NHWC square images at one of"):
        NET.apply(_variables(), jnp.zeros((1, 6, 6, 1)))
