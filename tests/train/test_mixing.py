"""Mixup / CutMix: images and targets mix with the same weight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax.train import cutmix, mix_batch, mixup, one_hot_targets

LABELS = jnp.array([0, 1, 2, 3])


def _images():
    # Image i is filled with the constant i + 1, so every pixel tells where it came from.
    return jnp.broadcast_to(jnp.arange(1.0, 5.0)[:, None, None, None], (4, 8, 8, 1))


@pytest.mark.parametrize("use_jit", [False, True])
def test_mixup_mixes_images_and_targets_alike(use_jit):
    targets = one_hot_targets(LABELS, 4)
    fn = jax.jit(mixup, static_argnames="alpha") if use_jit else mixup
    x, y, lam = fn(jax.random.key(1), _images(), targets, alpha=0.4)
    lam = float(lam)
    assert 0.0 < lam < 1.0
    mixed = lam * np.arange(1, 5) + (1 - lam) * np.arange(4, 0, -1)
    np.testing.assert_allclose(x[:, 0, 0, 0], mixed, rtol=1e-6)
    want = lam * np.eye(4) + (1 - lam) * np.eye(4)[::-1]
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_cutmix_targets_equal_pasted_area():
    targets = one_hot_targets(LABELS, 4, label_smoothing=0.1)
    for seed in range(5):
        x, y, kept = cutmix(jax.random.key(seed), _images(), targets, alpha=1.0)
        for i in range(4):
            own = float(np.mean(np.asarray(x[i]) == i + 1))
            other = float(np.mean(np.asarray(x[i]) == 4 - i))
            assert own + other == pytest.approx(1.0)
            assert own == pytest.approx(float(kept), abs=1e-6)
            np.testing.assert_allclose(y[i], own * targets[i] + other * targets[3 - i], atol=1e-6)
        np.testing.assert_allclose(np.sum(y, axis=1), 1.0, rtol=1e-6)


def test_mix_batch_off_is_identity_and_both_pick_one():
    targets = one_hot_targets(LABELS, 4)
    x, y = mix_batch(jax.random.key(0), _images(), targets)
    np.testing.assert_array_equal(x, _images())
    np.testing.assert_array_equal(y, targets)
    x, y = mix_batch(jax.random.key(0), _images(), targets, mixup_alpha=0.2, cutmix_alpha=1.0)
    np.testing.assert_allclose(np.sum(y, axis=1), 1.0, rtol=1e-6)
