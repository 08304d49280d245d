"""Low-rank factorization, LoRA adapters and the sparse storage cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archjax.sparsity as sp


@pytest.mark.parametrize("shape", [(8, 12), (3, 3, 4, 8)])
def test_factorize_is_exact_at_full_rank_and_truncates_by_energy(shape):
    kernel = jax.random.normal(jax.random.key(0), shape)
    full = min(int(np.prod(shape[:-1])), shape[-1])
    a, b = sp.factorize(kernel, rank=full)
    assert a.shape == (*shape[:-1], full) and b.shape == (full, shape[-1])
    np.testing.assert_allclose(sp.reconstruct(a, b), kernel, rtol=0, atol=1e-5)
    # Rank-r truncation is the best rank-r approximation: error = tail singular values.
    s = np.linalg.svd(np.asarray(kernel).reshape(-1, shape[-1]), compute_uv=False)
    a2, b2 = sp.factorize(kernel, rank=2)
    err = np.linalg.norm(np.asarray(sp.reconstruct(a2, b2) - kernel))
    assert err == pytest.approx(np.sqrt((s[2:] ** 2).sum()), rel=1e-4)
    r = sp.choose_rank(kernel, 0.9)
    frac = np.cumsum(s**2) / (s**2).sum()
    assert frac[r - 1] >= 0.9 - 1e-6 and (r == 1 or frac[r - 2] < 0.9)
    assert sp.factorize(kernel, energy=0.9)[0].shape[-1] == r


def test_lora_starts_at_base_and_trains_only_adapters():
    params = {
        "block": {"attn": {"kernel": jnp.ones((4, 6))}, "bias": jnp.zeros(6)},
        "conv": {"kernel": jnp.ones((3, 3, 2, 5))},
    }
    lora = sp.init_lora(params, [r"attn/kernel$", r"^conv/"], key=jax.random.key(0), rank=2)
    assert sorted(lora) == ["block/attn/kernel", "conv/kernel"]
    assert lora["conv/kernel"]["a"].shape == (18, 2) and lora["conv/kernel"]["b"].shape == (2, 5)
    merged = sp.merge(params, lora)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(x, y)

    def loss(lo):
        m = sp.merge(params, lo)
        return jnp.sum(m["block"]["attn"]["kernel"] ** 2) + jnp.sum(m["conv"]["kernel"])

    g = jax.grad(loss)(lora)
    assert np.abs(np.asarray(g["conv/kernel"]["b"])).sum() > 0  # b trains first (a @ 0 = 0)
    lora["conv/kernel"]["b"] = jnp.ones((2, 5))
    delta = sp.merge(params, lora)["conv"]["kernel"]
    want = (np.asarray(lora["conv/kernel"]["a"]) @ np.ones((2, 5))).reshape(3, 3, 2, 5) + 1
    np.testing.assert_allclose(delta, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="matches no parameter"):
        sp.init_lora(params, ["bias"], key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown parameters: nope"):
        sp.merge(params, {"nope": lora["conv/kernel"]})


def test_sparse_cost_formats():
    params = {"w": jnp.ones((8, 4)), "b": jnp.ones(4)}
    flags = sp.prunable(params, [sp.PruneRule(pattern="^w$")])
    mask = sp.n_m(params, prunable=flags)  # 2:4 along the 8 inputs: 16 of 32 kept
    c = sp.sparse_cost(params, mask, bits=4, fmt="n:m")
    assert (c.params, c.nonzero, c.dense_bits) == (36, 20, 144)
    assert c.sparse_bits == 16 * (4 + 2) + 4 * 4  # 2 bits of metadata per kept value
    assert sp.sparse_cost(params, mask, bits=4).sparse_bits == 16 * 4 + 32 + 16  # bitmap
    assert sp.sparse_cost(params, mask, bits=8, fmt="index16").sparse_bits == 16 * 24 + 32
    by_path = sp.sparse_cost(params, mask, bits=lambda p: 4 if p == "w" else 32, fmt="n:m")
    assert by_path.sparse_bits == 16 * 6 + 4 * 32 and c.sparsity == pytest.approx(16 / 36)
    with pytest.raises(ValueError, match="allowed: bitmap, index16, n:m"):
        sp.sparse_cost(params, mask, fmt="csr")


def test_bad_low_rank_input():
    with pytest.raises(ValueError, match="exactly one of rank= and energy="):
        sp.factorize(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match=r"rank=5 is outside \[1, 4\]"):
        sp.factorize(jnp.ones((4, 4)), rank=5)
    with pytest.raises(ValueError, match="ndim >= 2"):
        sp.factorize(jnp.ones(4), rank=1)
    with pytest.raises(ValueError, match=r"energy=1.5 is outside \(0, 1\]"):
        sp.choose_rank(jnp.ones((4, 4)), 1.5)
