import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax import data


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))


def test_rand_augment_shapes_range_and_randomness(images):
    fn = jax.jit(lambda k, x: data.rand_augment(k, x, num_layers=2, magnitude=10))
    a = fn(jax.random.key(1), images)
    b = fn(jax.random.key(2), images)
    assert a.shape == images.shape and a.dtype == images.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not np.allclose(a, b)


def test_single_ops_by_definition(images):
    def only(op, magnitude=10.0):
        return data.rand_augment(
            jax.random.key(3), images, num_layers=1, magnitude=magnitude, ops=[op]
        )

    np.testing.assert_allclose(only("identity"), images)
    np.testing.assert_allclose(only("solarize", 5.0), jnp.where(images >= 0.5, 1 - images, images))
    contrast = np.asarray(only("auto_contrast"))
    np.testing.assert_allclose(contrast.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(contrast.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    # Geometric ops at magnitude 0 are the identity (bilinear sampling on the grid).
    for op in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        np.testing.assert_allclose(only(op, 0.0), images, atol=1e-5, err_msg=op)
    with pytest.raises(ValueError, match="Unknown RandAugment ops"):
        data.rand_augment(jax.random.key(0), images, ops=["equalize"])
