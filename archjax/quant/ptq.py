"""Post-training quantization: calibrate activation scales, fold BatchNorm, re-estimate it.

A PTQ recipe on a trained float model (Jacob et al., 2018; Nagel et al., 2021,
"A White Paper on Neural Network Quantization"):

    folded = fold_batchnorm(model, variables, x)            # BN -> preceding conv
    qmodel = quantize_model(model, rules)
    qvars = calibrate_model(qmodel, folded, batches)          # fills quant_stats
    qvars = reestimate_batch_stats(qmodel, qvars, batches)    # optional (no-op if folded)

All three work on any Flax model without changing its code: layers are found by
tracing the model through :func:`archjax.quant.intercept.intercept` (the transform's
layer finder), not by name.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

from archjax.quant.intercept import intercept
from archjax.quant.transform import QUANT_STATS, is_quantized

Variables = Mapping[str, Any]


def _images(batch) -> jax.Array:
    return batch["image"] if isinstance(batch, Mapping) else batch


def calibrate_model(
    model: nn.Module,
    variables: Variables,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    **apply_kwargs,
) -> dict[str, Any]:
    """Fills the ``quant_stats`` collection by running calibration batches.

    Each activation scale becomes the mean over the batches of that batch's
    calibrated scale (absmax, percentile or MSE, as the rule says), the usual static
    calibration of PTQ (Jacob et al., 2018; Wu et al., 2020, "Integer Quantization
    for Deep Learning Inference"). Existing ``quant_stats`` are discarded first.

    Args:
      model: a module from :func:`archjax.quant.quantize_model`.
      variables: its variables (``params``, ``batch_stats``, any ``quant_stats``).
      batches: arrays ``[B, H, W, C]`` or dicts with an ``"image"`` key.
      num_batches: use at most this many batches (None: all).
      **apply_kwargs: passed to ``model.apply``; default ``train=False``.

    Returns:
      ``variables`` with a calibrated ``quant_stats`` collection.

    Raises:
      ValueError: the model is not quantized, ``num_batches < 1`` or no batch came.

    Example:
      >>> qvars = calibrate_model(qmodel, variables, [x[:64], x[64:128]])
    """
    if not is_quantized(model):
        raise ValueError("calibrate_model needs a model returned by archjax.quant.quantize_model.")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}.")
    kwargs = tuple(sorted({"train": False, **apply_kwargs}.items()))
    variables = {k: v for k, v in unfreeze(dict(variables)).items() if k != QUANT_STATS}
    try:  # hashable model and kwargs: one compiled step for every call on this model
        hash((model, kwargs))
        step = functools.partial(_calibration_step, model, kwargs)
    except TypeError:
        step = jax.jit(functools.partial(_calibrate_batch, model, kwargs))
    count = 0
    for batch in batches:
        if num_batches is not None and count >= num_batches:
            break
        variables = step(variables, jnp.asarray(_images(batch)))
        count += 1
    if count == 0:
        raise ValueError("calibrate_model got no batches.")
    return variables


def _calibrate_batch(model: nn.Module, kwargs: tuple, variables, x):
    """One calibration batch: ``quant_stats`` updated by ``model.apply``."""
    _, updates = model.apply(variables, x, mutable=[QUANT_STATS], **dict(kwargs))
    return {**variables, **unfreeze(updates)}


# The model and kwargs are static: calibrating one model again (PTQ, then after QAT)
# reuses the compiled step instead of tracing and compiling a new closure.
_calibration_step = jax.jit(_calibrate_batch, static_argnums=(0, 1))


def _find_conv_bn_pairs(model: nn.Module, variables: Variables, x: jax.Array, kwargs) -> list:
    """(layer path, BatchNorm path, epsilon) for each BatchNorm whose input *is* a layer output."""
    outputs: list[tuple[tuple[str, ...], Any]] = []  # (kernel layer path, its output)
    pairs: list[tuple[tuple[str, ...], tuple[str, ...], float]] = []

    def seen(module: nn.Module, args: tuple, out) -> None:
        path = tuple(module.scope.path)
        if isinstance(module, nn.BatchNorm):
            src = next((p for p, o in outputs if args and o is args[0]), None)
            if src is not None:
                pairs.append((src, path, module.epsilon))
        elif "kernel" in module.variables.get("params", {}):
            outputs.append((path, out))

    with intercept(on_module=seen):
        jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)
    return pairs


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def fold_batchnorm(
    model: nn.Module, variables: Variables, x: jax.Array, **apply_kwargs
) -> dict[str, Any]:
    """Folds each inference-mode BatchNorm into the conv (or dense) layer that feeds it.

    With ``s = scale / sqrt(var + eps)`` per channel, the layer's kernel becomes
    ``kernel * s`` (its bias, if any, ``bias * s``) and the BatchNorm becomes a pure
    bias add (``scale = 1``, ``mean = 0``, ``var = 1 - eps``, ``bias = beta - mean * s``),
    so the model code and variable tree are unchanged while weight quantization now
    sees the folded kernel, as deployed (Jacob et al., 2018, section 3.2). Eval-mode
    outputs are unchanged up to float rounding. Do not train a folded model.

    Args:
      model: any Flax module (float or quantized); pairs are found by tracing it.
      variables: its variables with ``params`` and ``batch_stats``.
      x: an example input (only its shape and dtype are used).
      **apply_kwargs: passed to ``model.apply``; default ``train=False``.

    Returns:
      New variables with every conv -> BatchNorm pair folded.

    Example:
      >>> folded = fold_batchnorm(model, variables, jnp.zeros((1, 16, 16, 1)))
    """
    apply_kwargs = {"train": False, **apply_kwargs}
    base = {k: v for k, v in unfreeze(dict(variables)).items()}
    pairs = _find_conv_bn_pairs(model, base, x, apply_kwargs)
    params = jax.tree.map(lambda a: a, base["params"])
    stats = jax.tree.map(lambda a: a, base.get("batch_stats", {}))
    for conv_path, bn_path, eps in pairs:
        bn_p, bn_s = _get(params, bn_path), _get(stats, bn_path)
        if "bias" not in bn_p:
            continue  # nowhere to put the folded shift
        var, mean = bn_s["var"], bn_s["mean"]
        gamma = bn_p.get("scale", jnp.ones_like(var))
        s = gamma * jax.lax.rsqrt(var + eps)
        conv = _get(params, conv_path)
        conv["kernel"] = conv["kernel"] * s
        if "bias" in conv:
            conv["bias"] = conv["bias"] * s
        bn_p["bias"] = bn_p["bias"] - mean * s
        if "scale" in bn_p:
            bn_p["scale"] = jnp.ones_like(gamma)
        bn_s["mean"] = jnp.zeros_like(mean)
        bn_s["var"] = jnp.full_like(var, 1.0 - eps)
    return {**base, "params": params, "batch_stats": stats}


def reestimate_batch_stats(
    model: nn.Module,
    variables: Variables,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    **apply_kwargs,
) -> dict[str, Any]:
    """Re-estimates BatchNorm running statistics of a (quantized) model on data.

    Quantizing weights shifts the statistics of the activations that BatchNorm
    normalizes; running the quantized model in train mode over a few batches
    re-estimates them (Nagel et al., 2021, "bias correction"; the "BN re-estimation"
    of PTQ and QAT papers). The model's own BatchNorm momentum is used, so run
    enough batches for it to forget the old values (about ``3 / (1 - momentum)``).

    Args:
      model: any Flax module whose train mode updates ``batch_stats``.
      variables: its variables.
      batches: arrays or dicts with an ``"image"`` key.
      num_batches: use at most this many batches (None: all).
      **apply_kwargs: passed to ``model.apply``; default ``train=True``. Dropout and
        stochastic depth get a fixed key.

    Returns:
      ``variables`` with updated ``batch_stats``.

    Example:
      >>> qvars = reestimate_batch_stats(qmodel, qvars, batches, num_batches=30)
    """
    apply_kwargs = {"train": True, **apply_kwargs}
    variables = unfreeze(dict(variables))
    if not variables.get("batch_stats"):
        return variables

    @jax.jit
    def step(variables, x):
        _, updates = model.apply(
            variables,
            x,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
            **apply_kwargs,
        )
        return {**variables, "batch_stats": unfreeze(updates)["batch_stats"]}

    for i, batch in enumerate(batches):
        if num_batches is not None and i >= num_batches:
            break
        variables = step(variables, jnp.asarray(_images(batch)))
    return variables
