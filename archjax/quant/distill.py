"""Data-free calibration: a synthetic batch distilled from BatchNorm statistics (ZeroQ).

ZeroQ (Cai et al., 2020, "ZeroQ: A Novel Zero Shot Quantization Framework")
optimizes an input batch, starting from Gaussian noise, until the batch statistics
that each BatchNorm layer sees match the running statistics it stored in training:

    min_x  sum_i  ||mu_i(x) - mu_i||^2 + ||sigma_i(x) - sigma_i||^2   (per-channel vectors)

The distilled batch then replaces real data for PTQ calibration:

    x = distill_calibration_data(model, variables, (64, 16, 16, 1), steps=500, seed=0)
    qvars = calibrate_model(qmodel, variables, [x])

BatchNorm inputs are found by tracing the model through
:func:`archjax.quant.intercept.intercept` (module calls), the layer finder that PTQ's
BatchNorm folding uses, so any Flax model works without changing its code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.core import unfreeze

from archjax.quant.intercept import intercept

__all__ = ["batchnorm_gaps", "batchnorm_input_stats", "distill_calibration_data"]

Variables = Mapping[str, Any]
_EPS = 1e-5  # added to both variances before the square root (BatchNorm's default epsilon)


def _bn_inputs(model: nn.Module, variables: Variables, x: jax.Array, apply_kwargs) -> list:
    """(path, axis, input) of every BatchNorm call, in call order (traced values inside jit)."""
    seen: list[tuple[tuple[str, ...], int, jax.Array]] = []

    def on_module(module: nn.Module, args: tuple, out) -> None:
        if isinstance(module, nn.BatchNorm) and args:
            seen.append((tuple(module.scope.path), module.axis, args[0]))

    with intercept(on_module=on_module):
        model.apply(variables, x, **apply_kwargs)
    return seen


def _moments(h: jax.Array, axis) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased, as BatchNorm's) variance over every other axis."""
    h = h.astype(jnp.float32)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % h.ndim for a in axes)
    reduce = tuple(a for a in range(h.ndim) if a not in axes)
    mean = jnp.mean(h, axis=reduce)
    return mean, jnp.mean(jnp.square(h - jnp.expand_dims(mean, reduce)), axis=reduce)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _check_shape(shape) -> tuple[int, ...]:
    ok = isinstance(shape, Sequence) and len(shape) >= 2
    ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    if not ok:
        raise ValueError(
            f"shape={shape!r} is not allowed: give the batch's full shape as a tuple of "
            "positive ints, batch axis first, e.g. (64, 16, 16, 1)"
        )
    return tuple(shape)


def _checked(model, variables, shape, apply_kwargs) -> list:
    """The BatchNorm layers (path, axis) of ``model`` on inputs of ``shape``; clear errors."""
    if not variables.get("batch_stats"):
        raise ValueError(
            "variables have no 'batch_stats' collection: ZeroQ distillation needs a model "
            "with BatchNorm running statistics"
        )
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    try:
        found: list = []
        trace = lambda v, x: found.extend(_bn_inputs(model, v, x, apply_kwargs))
        jax.eval_shape(trace, variables, x)
    except Exception as e:  # the model rejects the shape (wrong channels, rank...)
        raise ValueError(
            f"shape={shape} does not fit the model: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    if not found:
        raise ValueError(
            f"{type(model).__name__} calls no nn.BatchNorm on inputs of shape {shape}: ZeroQ "
            "distillation matches BatchNorm statistics, so it needs a model with BatchNorm"
        )
    stats = variables["batch_stats"]
    for path, _, _ in found:
        try:
            _get(stats, path)["mean"], _get(stats, path)["var"]
        except (KeyError, TypeError):
            raise ValueError(
                f"batch_stats has no running mean/var for BatchNorm {'/'.join(path)!r}"
            ) from None
    return [(path, axis) for path, axis, _ in found]


def batchnorm_input_stats(
    model: nn.Module, variables: Variables, x: jax.Array, **apply_kwargs
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per-channel mean and variance of the input of each BatchNorm layer on batch ``x``.

    Args:
      model: any Flax module that uses ``nn.BatchNorm``.
      variables: its variables (``params``, ``batch_stats``).
      x: an input batch.
      **apply_kwargs: passed to ``model.apply``; default ``train=False``.

    Returns:
      ``{"stage1_block1/bn1": (mean, var), ...}`` in call order ("/"-joined paths).

    Example:
      >>> stats = batchnorm_input_stats(model, variables, x)
    """
    apply_kwargs = {"train": False, **apply_kwargs}
    x = jnp.asarray(x, jnp.float32)
    _checked(model, variables, tuple(x.shape), apply_kwargs)
    return {
        "/".join(path): _moments(h, axis)
        for path, axis, h in _bn_inputs(model, variables, x, apply_kwargs)
    }


def batchnorm_gaps(
    model: nn.Module, variables: Variables, x: jax.Array, **apply_kwargs
) -> dict[str, dict[str, float]]:
    """How far batch ``x``'s BatchNorm input statistics are from the stored running ones.

    For each layer, ``mean`` is ``||mu(x) - mu|| / (||sigma|| + 1e-8)`` (the mean's error in
    units of the running standard deviation) and ``std`` is ``||sigma(x) - sigma|| /
    ||sigma||``, with per-channel vectors and ``sigma = sqrt(var)``.

    Returns:
      ``{"path": {"mean": float, "std": float}, ...}`` in call order.

    Example:
      >>> gaps = batchnorm_gaps(model, variables, distilled)
    """
    stats = variables.get("batch_stats", {})
    out = {}
    for name, (mean, var) in batchnorm_input_stats(model, variables, x, **apply_kwargs).items():
        run = _get(stats, name.split("/"))
        sigma = jnp.sqrt(run["var"])
        norm = float(jnp.linalg.norm(sigma)) + 1e-8
        out[name] = {
            "mean": float(jnp.linalg.norm(mean - run["mean"])) / norm,
            "std": float(jnp.linalg.norm(jnp.sqrt(var) - sigma)) / norm,
        }
    return out


def distill_calibration_data(
    model: nn.Module,
    variables: Variables,
    shape: Sequence[int],
    *,
    steps: int = 500,
    seed: int = 0,
    learning_rate: float = 0.1,
    **apply_kwargs,
) -> jax.Array:
    """A synthetic batch whose BatchNorm input statistics match the stored ones (ZeroQ).

    Starts from ``N(0, 1)`` noise and runs ``steps`` Adam steps on the ZeroQ loss
    (Cai et al., 2020, eq. 2): the sum over BatchNorm layers of the mean squared
    difference between the batch's per-channel mean and standard deviation (over all
    axes but the channel axis) and the layer's running mean and ``sqrt(var)``. The model
    runs in inference mode (``train=False``), so its variables are not changed.
    Unlike ZeroQ's reference code, the statistics are those of the whole batch (what
    BatchNorm stores), not of each image; and the input is not pulled to ``N(0, 1)``.

    Args:
      model: any Flax module with ``nn.BatchNorm`` layers (float or quantized).
      variables: its trained variables; ``batch_stats`` holds the running statistics.
      shape: the batch's full shape, batch first, e.g. ``(64, 16, 16, 1)``.
      steps: optimizer steps (>= 1); ZeroQ uses 500.
      seed: seed of the initial noise; the same seed gives the same batch, bit for bit.
      learning_rate: Adam's learning rate (> 0).
      **apply_kwargs: passed to ``model.apply``; default ``train=False``.

    Returns:
      The distilled batch, float32 of ``shape``.

    Raises:
      ValueError: a bad ``shape`` (or one the model rejects), ``steps`` or
        ``learning_rate``; no ``batch_stats``; a model that calls no BatchNorm.

    Example:
      >>> x = distill_calibration_data(model, variables, (64, 16, 16, 1), steps=200, seed=0)
      >>> qvars = calibrate_model(qmodel, variables, [x])
    """
    shape = _check_shape(shape)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r} is not allowed: it must be an int >= 1")
    if not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate!r} is not allowed: it must be > 0")
    apply_kwargs = {"train": False, **apply_kwargs}
    variables = unfreeze(dict(variables))
    layers = _checked(model, variables, shape, apply_kwargs)
    targets = []
    for path, _ in layers:
        run = _get(variables["batch_stats"], path)
        var = run["var"].astype(jnp.float32)
        targets.append((run["mean"].astype(jnp.float32), jnp.sqrt(var + _EPS)))

    def loss_fn(x):
        total = 0.0
        for (_, axis, h), (mu, sigma) in zip(
            _bn_inputs(model, variables, x, apply_kwargs), targets, strict=True
        ):
            mean, var = _moments(h, axis)
            std = jnp.sqrt(var + _EPS)  # eps: a finite gradient at var = 0
            total += jnp.mean(jnp.square(mean - mu)) + jnp.mean(jnp.square(std - sigma))
        return total

    tx = optax.adam(learning_rate)

    @jax.jit
    def run(x):
        def step(carry, _):
            x, opt_state = carry
            grad = jax.grad(loss_fn)(x)
            updates, opt_state = tx.update(grad, opt_state, x)
            return (optax.apply_updates(x, updates), opt_state), None

        (x, _), _ = jax.lax.scan(step, (x, tx.init(x)), None, length=steps)
        return x

    x0 = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    return run(x0)
