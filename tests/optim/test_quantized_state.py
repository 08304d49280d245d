import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archjax import models, optim
from archjax.optim.quantized_state import _code_book, _decode, _encode, _encoder_table

MAPS = [(8, True), (8, False), (4, True), (4, False)]


def _binary_search_index(code: np.ndarray, x: jax.Array) -> jax.Array:
    """The encoder archjax used before the arithmetic one (oracle): nearest entry of the
    sorted ``code`` by an 8-step binary search over the float32 midpoints, ties down."""
    mid_np = (code[1:] + code[:-1]) / 2
    midpoints = jnp.asarray(mid_np)
    step = code.size // 2
    idx = jnp.where(x > float(mid_np[step - 1]), step, 0)
    step //= 2
    while step >= 1:
        idx = idx + jnp.where(x > midpoints[idx + step - 1], step, 0)
        step //= 2
    return idx.astype(jnp.uint8)


def _hard_values(code: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Codes, midpoints and their float32 neighbours (both signs), zeros, values beyond
    the map, infinities, NaNs (quiet and signalling, both signs), and uniform and
    log-uniform random values; then the first and last float of every range of floats
    that shares its top 16 bits (the encoder's table buckets): the encoder's answer is a
    step function with at most one step inside such a range, at a midpoint, so with the
    midpoints' neighbours this checks it on every float32."""
    mid = (code[1:] + code[:-1]) / 2
    edges = np.concatenate([code, mid])
    edges = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)])
    special = [0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 1e30, -1e30, np.inf, -np.inf, np.nan, 1e-40]
    uniform = rng.uniform(-1.2, 1.2, n)
    log_uniform = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-9, 0.05, n)
    x = np.concatenate([edges, -edges, special, uniform, log_uniform]).astype(np.float32)
    top = np.arange(2**16, dtype=np.uint32) << 16
    nans = np.array([0x7F800001, 0x7F80FFFF, 0xFF800001, 0xFFC00000, 0x7FFFFFFF], np.uint32)
    patterns = np.concatenate([top, top | 0xFFFF, nans])
    return np.concatenate([x, patterns.view(np.float32)])


def test_dynamic_map_matches_its_definition():
    code = optim.dynamic_map(signed=True)
    assert code.shape == (256,) and np.all(np.diff(code) > 0)
    # Decade i holds 2**i midpoints of linspace(0.1, 1, 2**i + 1), times 10**(i - 6).
    for i in range(7):
        bounds = np.linspace(0.1, 1.0, 2**i + 2 - 1)
        mids = (bounds[:-1] + bounds[1:]) / 2 * 10.0 ** (i - 6)
        assert np.all(np.isin(mids.astype(np.float32), code)), i
        assert np.all(np.isin((-mids).astype(np.float32), code)), i
    assert 0.0 in code and code[-1] == 1.0 and code[0] > -1.0  # bitsandbytes' asymmetry
    unsigned = optim.dynamic_map(signed=False)
    assert unsigned.shape == (256,) and unsigned.min() == 0.0 and unsigned.max() == 1.0
    assert unsigned[1] == pytest.approx(0.325e-6)  # finest decade: 2 midpoints of [0.1, 1]
    assert optim.dynamic_map(signed=True, max_exponent_bits=3, total_bits=4).shape == (16,)
    assert optim.linear_map_no_zero(4).min() == 1 / 16


@pytest.mark.parametrize("bits,signed", [(8, True), (8, False), (4, True), (4, False)])
def test_round_trip_error_is_at_most_half_a_code_gap(bits, signed):
    x = jax.random.normal(jax.random.key(bits), (3, 1000)) * 0.01
    x = x if signed else x**2
    block = 256
    q = optim.quantize_blockwise(x, bits=bits, signed=signed, block_size=block)
    assert q.codes.dtype == jnp.uint8
    assert q.codes.shape == (12, block if bits == 8 else block // 2)
    y = optim.dequantize_blockwise(q)
    assert y.shape == x.shape
    code = _code_book(bits, signed)
    # Worst case: half the widest gap inside the map, or the distance from the map's ends
    # to the ends of the normalized range ([-1, 1] signed, [0, 1] unsigned).
    half_gap = max(np.diff(code).max() / 2, code[0] - (-1.0 if signed else 0.0), 1.0 - code[-1])
    flat = np.pad(np.ravel(x), (0, 12 * block - x.size)).reshape(12, block)
    absmax = np.abs(flat).max(axis=1, keepdims=True)
    bound = half_gap * absmax + 1e-7
    err = np.abs(np.pad(np.ravel(y - x), (0, 12 * block - x.size)).reshape(12, block))
    assert np.all(err <= bound)
    if not signed:
        # Code-book values times absmax are fixed points, so re-quantizing is idempotent
        # (for signed maps only if absmax came from a positive value: the map's most
        # negative entry is -0.99 (8-bit) / -0.89 (4-bit), as in bitsandbytes).
        q2 = optim.quantize_blockwise(y, bits=bits, signed=signed, block_size=block)
        np.testing.assert_array_equal(np.asarray(q2.codes), np.asarray(q.codes))
    rel = float(jnp.mean(jnp.abs(y - x)) / jnp.max(jnp.abs(x)))
    assert rel < (0.004 if bits == 8 else 0.05), rel


@pytest.mark.parametrize("bits,signed", MAPS)
def test_decoder_inverts_the_encoder(bits, signed):
    code = _code_book(bits, signed)
    decoded = _decode(jnp.arange(code.size, dtype=jnp.uint8), bits, signed)
    np.testing.assert_array_equal(np.asarray(decoded).view(np.int32), code.view(np.int32))
    np.testing.assert_array_equal(np.asarray(_encode(decoded, bits, signed)), np.arange(code.size))


@pytest.mark.parametrize("bits,signed", MAPS)
def test_encoder_equals_the_binary_search_bit_for_bit(bits, signed):
    code = _code_book(bits, signed)
    x = _hard_values(code, np.random.default_rng(bits + signed), 10**5)
    assert x.size > 2 * 10**5
    assert _encoder_table(bits, signed).shape == (2**16,)
    new = jax.jit(_encode, static_argnums=(1, 2))(x, bits, signed)
    old = jax.jit(lambda v: _binary_search_index(code, v))(x)
    assert new.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    finite = ~np.isnan(x)  # the numpy oracle of the tests below, checked here
    np.testing.assert_array_equal(_search_index(code, x[finite]), np.asarray(old)[finite])


def _search_index(code: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The binary search's answer for non-NaN ``x``: the float32 midpoints below ``x``."""
    return np.searchsorted((code[1:] + code[:-1]) / 2, x, side="left").astype(np.uint8)


def _reference_codes(x: np.ndarray, bits: int, signed: bool, block: int):
    """quantize_blockwise as archjax computed it before issue 18 (oracle, in numpy): flat
    blocks, absmax, normalize, nearest code, pack."""
    block = min(block, x.size + x.size % 2)
    flat = np.pad(np.ravel(x), (0, -x.size % block)).reshape(-1, block)
    absmax = np.abs(flat).max(axis=1)
    normed = flat / np.where(absmax > 0, absmax, np.float32(1))[:, None]
    assert normed.dtype == np.float32
    codes = _search_index(_code_book(bits, signed), normed)
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return codes, absmax


# Moment shapes that take each path of the quantizer: trailing axes dividing a block
# (with and without a padded last block), rows holding whole blocks, blocks straddling
# rows (the flat path), one block smaller than block_size.
SHAPES = [(3, 3, 64, 64), (7, 7, 3, 64), (6, 4096), (300, 700), (1000,), (2, 3, 5)]


@pytest.mark.parametrize("bits,signed", MAPS)
def test_quantized_codes_equal_the_binary_search_codes(bits, signed):
    """Whole quantize_blockwise (absmax, normalize, encode, pack) on random moments."""
    block = 2048 if bits == 8 else 128
    for i, shape in enumerate(SHAPES):
        k1, k2 = jax.random.split(jax.random.key(100 * bits + i))
        scale = 10.0 ** jax.random.uniform(k2, shape, minval=-6, maxval=0)
        x = jax.random.normal(k1, shape) * scale
        x = np.asarray(x if signed else x**2)
        q = optim.quantize_blockwise(x, bits=bits, signed=signed, block_size=block)
        codes, absmax = _reference_codes(x, bits, signed, block)
        np.testing.assert_array_equal(np.asarray(q.absmax), absmax, err_msg=str(shape))
        np.testing.assert_array_equal(np.asarray(q.codes), codes, err_msg=str(shape))


@pytest.fixture(scope="module")
def resnet50_params():
    model = models.create("resnet50", num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["params"])


@pytest.mark.parametrize("bits,limit", [(32, 8.01), (8, 2.1), (4, 1.1)])
def test_adam_state_bytes_per_parameter(resnet50_params, bits, limit):
    """Sums the bytes of the real state arrays of Adam on ResNet-50 (23.5M parameters)."""
    n = sum(p.size for p in jax.tree.leaves(resnet50_params))
    inner = optax.adam(1e-3)
    tx = inner if bits == 32 else optim.quantize_state(inner, bits=bits)
    state = jax.jit(tx.init)(resnet50_params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    per_param = optim.state_bytes(state) / n
    assert per_param <= limit, per_param
    if bits == 32:
        assert per_param > 7.99


@pytest.mark.parametrize("bits,use_jit", [(8, False), (8, True), (4, True)])
def test_quantized_adam_follows_fp32_adam(bits, use_jit):
    key = jax.random.key(0)
    params = {"w": jax.random.normal(key, (64, 96)), "b": jnp.zeros(96)}
    ref_tx, q_tx = optax.adam(1e-2), optim.quantize_state(optax.adam(1e-2), bits=bits)
    ref_p, q_p = params, params
    ref_s, q_s = ref_tx.init(params), q_tx.init(params)
    ref_up = jax.jit(ref_tx.update) if use_jit else ref_tx.update
    q_up = jax.jit(q_tx.update) if use_jit else q_tx.update
    for i in range(5):
        k = jax.random.fold_in(key, i)
        g = jax.tree.map(lambda p, k=k: jax.random.normal(k, p.shape), params)
        u, ref_s = ref_up(g, ref_s, ref_p)
        ref_p = optax.apply_updates(ref_p, u)
        u, q_s = q_up(g, q_s, q_p)
        q_p = optax.apply_updates(q_p, u)
    assert isinstance(q_s.inner[0].mu["w"], optim.QuantizedArray)
    assert q_s.inner[0].mu["w"].signed and not q_s.inner[0].nu["w"].signed
    chex.assert_trees_all_close(q_p["b"], ref_p["b"])  # small leaves stay float32
    # Mean distance to fp32 Adam relative to the mean distance travelled, after 5 steps
    # of pure-noise gradients (measured: 0.9% for 8 bits, 14% for 4 bits).
    drift = float(jnp.mean(jnp.abs(q_p["w"] - ref_p["w"])))
    moved = float(jnp.mean(jnp.abs(ref_p["w"] - params["w"])))
    assert drift < (0.02 if bits == 8 else 0.25) * moved, (drift, moved)
    assert np.all(np.isfinite(np.asarray(q_p["w"])))


@pytest.mark.parametrize("bits", [8, 4])
def test_update_codes_equal_the_reference_quantizer(bits):
    """One jitted quantized-Adam step on random moments: the new codes and absmax are the
    reference quantization of float32 Adam's new moments from the dequantized state."""
    shapes = [(7, 7, 3, 64), (6, 4096), (300, 700)]  # rows (padded), whole blocks, flat
    keys = jax.random.split(jax.random.key(bits), 2 * len(shapes))
    params = {f"w{i}": jax.random.normal(keys[i], s) for i, s in enumerate(shapes)}
    tx = optim.quantize_state(optax.adam(1e-3), bits=bits, min_size=1)
    update = jax.jit(tx.update)
    # A first update from zero moments gives random (quantized) moments to start from.
    _, state = update(jax.tree.map(lambda p: p * 1e-3, params), jax.jit(tx.init)(params), params)
    grads = {
        k: jax.random.normal(keys[len(shapes) + i], p.shape) * 10.0 ** (i - 3)
        for i, (k, p) in enumerate(params.items())
    }
    old = state.inner[0]
    _, state = update(grads, state, params)
    floats = old._replace(
        mu={k: optim.dequantize_blockwise(q) for k, q in old.mu.items()},
        nu={k: optim.dequantize_blockwise(q) for k, q in old.nu.items()},
    )
    _, (ref, _) = jax.jit(optax.adam(1e-3).update)(grads, (floats, optax.EmptyState()), params)
    new = state.inner[0]
    for field, signed in (("mu", True), ("nu", False)):
        for k in params:
            codes, absmax = _reference_codes(
                np.asarray(getattr(ref, field)[k]), bits, signed, 2048 if bits == 8 else 128
            )
            q = getattr(new, field)[k]
            np.testing.assert_array_equal(np.asarray(q.absmax), absmax, err_msg=field + k)
            np.testing.assert_array_equal(np.asarray(q.codes), codes, err_msg=field + k)
