"""The ResNet supernet: extracted children, bad spaces, the sandwich step on 8 devices."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archjax import models, nas, parallel
from archjax.train import create_train_state, jit_train_step

from .supernets import noisy_variables

SPACE = nas.ResNetSpace(
    depths=((1, 2), (1, 2)), widths=((4, 8), (8, 16)), kernels=(3, 5), resolutions=(8,)
)
NET = nas.SuperResNet(SPACE)


@functools.cache
def _variables():
    """Supernet variables with non-trivial BatchNorm statistics and affine parameters."""
    return noisy_variables(NET, (1, 8, 8, 3))


@functools.cache
def _supernet_apply():
    return jax.jit(lambda v, x, child: NET.apply(v, x, child))


def test_extracted_children_equal_the_supernet_child():
    v, x = _variables(), jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
    rng = np.random.default_rng(0)
    archs = [SPACE.largest(), SPACE.smallest(), *(SPACE.sample(rng) for _ in range(4))]
    for arch in archs:
        model, child = nas.extract(SPACE, v, arch)
        assert isinstance(model, models.ResNet) and model.stage_widths == arch.widths
        # A standalone model: its own parameter shapes, nothing of the larger blocks.
        n_child = sum(p.size for p in jax.tree.leaves(child["params"]))
        assert n_child == sum(
            p.size for p in jax.tree.leaves(model.init(jax.random.key(0), x)["params"])
        )
        expected = _supernet_apply()(v, x, SPACE.encode(arch))
        # Equal up to float summation order (zero channels and kernel entries added).
        np.testing.assert_allclose(model.apply(child, x), expected, rtol=1e-5, atol=1e-5)


def test_a_masked_kernel_entry_gets_no_gradient():
    v, x = _variables(), jnp.ones((2, 8, 8, 3))
    arch = nas.Arch(depths=(2, 2), widths=(8, 16), kernels=(3, 3), resolution=8)
    grads = jax.grad(lambda p: NET.apply({**v, "params": p}, x, SPACE.encode(arch)).sum())(
        v["params"]
    )
    g = grads["stage1_block1"]["conv1"]["kernel"]  # 5x5 in the supernet, 3x3 in use
    assert jnp.all(g[0] == 0) and jnp.all(g[:, 0] == 0) and jnp.any(g[1:4, 1:4] != 0)


def test_bad_spaces_and_archs_name_the_problem():
    with pytest.raises(ValueError, match=r"widths\[1\] is an empty choice"):
        nas.ResNetSpace(depths=((1,), (1,)), widths=((4,), ()))
    with pytest.raises(ValueError, match="kernels must be odd"):
        nas.ResNetSpace(kernels=(3, 4))
    with pytest.raises(ValueError, match="depths has 2 stages and widths 3"):
        nas.ResNetSpace(depths=((1,), (1,)), widths=((4,), (8,), (16,)))
    too_wide = nas.Arch(depths=(1, 1), widths=(4, 32), kernels=(3, 3), resolution=8)
    with pytest.raises(ValueError, match=r"widths\[1\] = 32 \(above the supernet's\)"):
        nas.extract(SPACE, _variables(), too_wide)
    with pytest.raises(ValueError, match="resolution = 16 is not one of"):
        SPACE.encode(nas.Arch(depths=(1, 1), widths=(4, 8), kernels=(3, 3), resolution=16))
    with pytest.raises(ValueError, match="num_random must be >= 0"):
        nas.make_sandwich_step(NET, optax.sgd(0.1), num_random=-1)


def _batches(n=2, batch=16):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.normal(size=(batch, 8, 8, 3)).astype(np.float32),
            "label": rng.integers(0, 10, size=batch).astype(np.int32),
        }
        for _ in range(n)
    ]


def _run_sandwich(devices: int):
    tx = optax.sgd(0.05, momentum=0.9)
    mesh = parallel.make_mesh(devices)
    state = create_train_state(NET, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 3), mesh=mesh)
    step = nas.make_sandwich_step(NET, tx, num_random=1, conflict=True)
    step = jit_train_step(step, mesh=mesh, state=state)
    metrics = []
    for b in _batches():
        state, m = step(state, parallel.shard_batch(b, mesh))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def test_sandwich_step_on_8_devices_equals_1_device():
    one, m1 = _run_sandwich(1)
    eight, m8 = _run_sandwich(8)
    chex.assert_trees_all_close(eight.params, one.params, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(eight.batch_stats, one.batch_stats, rtol=1e-5, atol=1e-5)
    for a, b in zip(m1, m8, strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5)
    assert -1.0 <= m1[0]["grad_cosine"] <= 1.0 and np.isfinite(m1[1]["loss_smallest"])
    # Trained: the shared weights moved, and the largest child's loss is finite.
    assert int(one.step) == 2 and all(np.isfinite(m["loss"]) for m in m1)


def test_recalibrate_gives_the_child_its_own_statistics():
    v = _variables()
    arch = SPACE.smallest()
    batches = [b["image"] for b in _batches()]
    model, child = nas.recalibrate(SPACE, v, arch, batches, num_batches=2)
    _, sliced = nas.extract(SPACE, v, arch)
    before = sliced["batch_stats"]["stem_bn"]["mean"]
    after = child["batch_stats"]["stem_bn"]["mean"]
    assert after.shape == before.shape and not np.allclose(after, before)
    assert np.isfinite(np.asarray(model.apply(child, batches[0]))).all()
