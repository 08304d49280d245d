"""Zero-cost proxies: scores of an untrained network that are meant to rank architectures.

Each proxy is a function ``proxy(model, variables, batch) -> float`` of a Flax model
(any registered archjax model), its freshly initialized variables and one batch
(``{"image": [B, H, W, C], "label": [B]}`` or an ``(images, labels)`` pair); larger
means "predicted to train better". None is trained and none is a substitute for
training: :mod:`experiments.studies.zero_cost` measures how well each ranks trained
accuracy against the trivial baselines (parameter count, FLOPs).

- ``grad_norm``: the L2 norm of the loss gradient (Abdelfattah et al., 2021).
- ``snip``: ``sum |w * dL/dw|``, SNIP's connection saliency summed (Lee et al., 2019).
- ``synflow``: ``sum |w| * dR/d|w|`` with ``R`` the summed output of the network with
  absolute weights on an all-ones input (Tanaka et al., 2020): data-free, so it
  depends on the batch only through its shape.
- ``naswot``: ``log|det K|`` of the examples' binary activation codes, with
  ``K[i, j]`` the number of units on which examples ``i`` and ``j`` agree (Mellor et
  al., 2021, "Neural Architecture Search without Training").
- ``swap``: the number of distinct sample-wise activation patterns, i.e. of distinct
  units' on/off vectors over the batch (Peng et al., 2024, "SWAP-NAS").

Activation codes (``naswot``, ``swap``) are the signs of the inputs of every layer
with a kernel after the first (found with Flax's ``nn.intercept_methods``): in the
ResNet and VGG families those inputs are ReLU outputs, so the code is the ReLU on/off
pattern of the papers; in ViT and Mixer they are the signs of normalized or GELU
activations, a binary code in the same spirit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Batch = Mapping[str, Any] | tuple


def _split(batch: Batch) -> tuple[jax.Array, jax.Array | None]:
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise ValueError(f"A batch dict needs an 'image' key; got keys {sorted(batch)}.")
        return jnp.asarray(batch["image"]), batch.get("label")
    if isinstance(batch, tuple) and len(batch) == 2:
        return jnp.asarray(batch[0]), batch[1]
    raise ValueError(
        "A batch is a dict with 'image'/'label' or an (images, labels) pair; "
        f"got {type(batch).__name__}."
    )


def _logits(model: nn.Module, variables, images, *, train: bool):
    """Logits in train mode (batch statistics of this batch; dropout with a fixed key)."""
    out = model.apply(
        variables,
        images,
        train=train,
        mutable=["batch_stats"] if train else False,
        rngs={"dropout": jax.random.key(0)},
    )
    return out[0] if train else out


@functools.lru_cache(maxsize=64)
def _gradient_program(model: nn.Module, kind: str) -> Callable:
    """One jitted gradient program per (model, proxy kind): eager differentiation would
    dispatch (and compile) every primitive on its own."""
    if kind == "loss":

        def grads(params, rest, images, labels):
            def loss(p):
                logits = _logits(model, {"params": p, **rest}, images, train=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            return jax.grad(loss)(params)

    else:  # synflow: the summed output with |w| on the given (all-ones) input

        def grads(params, rest, images, labels):
            del labels
            total = lambda p: jnp.sum(_logits(model, {"params": p, **rest}, images, train=False))
            return jax.grad(total)(params)

    return jax.jit(grads)


def _loss_grads(model, variables, batch):
    images, labels = _split(batch)
    if labels is None:
        raise ValueError("This proxy needs labels: pass {'image': ..., 'label': ...}.")
    labels = jnp.asarray(labels)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels of shape {labels.shape} do not match {images.shape[0]} images.")
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    return params, _gradient_program(model, "loss")(params, rest, images, labels)


def grad_norm(model: nn.Module, variables, batch: Batch) -> float:
    """L2 norm of the gradient of the mean cross-entropy over ``batch`` at ``variables``."""
    _, grads = _loss_grads(model, variables, batch)
    return float(optax.tree.norm(grads))


def snip(model: nn.Module, variables, batch: Batch) -> float:
    """SNIP saliency summed over all parameters: ``sum |w * dL/dw|`` (Lee et al., 2019)."""
    params, grads = _loss_grads(model, variables, batch)
    terms = jax.tree.map(lambda w, g: jnp.sum(jnp.abs(w * g)), params, grads)
    return float(sum(jax.tree.leaves(terms)))


def synflow(model: nn.Module, variables, batch: Batch) -> float:
    """SynFlow (Tanaka et al., 2020): ``sum |w| * dR/d|w|``, ``R = sum f_{|w|}(1)``.

    The network runs in inference mode (BatchNorm with its stored statistics) with every
    parameter replaced by its absolute value on an all-ones batch shaped like ``batch``'s
    images: the score does not depend on the data. It grows quickly with depth; for deep
    networks compare ``log`` scores.
    """
    images, _ = _split(batch)
    params = jax.tree.map(jnp.abs, variables["params"])
    rest = {k: v for k, v in variables.items() if k != "params"}
    ones = jnp.ones_like(images)
    grads = _gradient_program(model, "synflow")(params, rest, ones, None)
    terms = jax.tree.map(lambda w, g: jnp.sum(w * g), params, grads)
    return float(sum(jax.tree.leaves(terms)))


@functools.lru_cache(maxsize=64)
def _codes_program(model: nn.Module) -> Callable:
    """One jitted program per model returning the sign of every kernel layer's input."""

    def run(variables, images):
        codes: list[jax.Array] = []

        def record(next_fun, args, kwargs, context):
            module = context.module
            if (
                context.method_name == "__call__"
                and args
                and isinstance(args[0], jax.Array)
                and module.has_variable("params", "kernel")
            ):
                x = args[0]
                codes.append((x > 0).reshape(x.shape[0], -1))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            _logits(model, variables, images, train=True)
        return codes

    return jax.jit(run)


def activation_codes(model: nn.Module, variables, batch: Batch) -> np.ndarray:
    """``[B, units]`` booleans: the sign (> 0) of every input unit of each layer with a
    kernel after the first (see the module docstring), per example."""
    images, _ = _split(batch)
    codes = _codes_program(model)(variables, images)
    if len(codes) < 2:
        raise ValueError(
            f"{type(model).__name__} has {len(codes)} layer(s) with a kernel; "
            "activation codes need at least 2."
        )
    return np.concatenate([np.asarray(c) for c in codes[1:]], axis=1)


def naswot(model: nn.Module, variables, batch: Batch) -> float:
    """NASWOT (Mellor et al., 2021): ``log|det K|``, ``K_ij`` = units where ``i``, ``j`` agree."""
    c = activation_codes(model, variables, batch).astype(np.float64)
    k = c @ c.T + (1.0 - c) @ (1.0 - c).T
    return float(np.linalg.slogdet(k)[1])


def swap(model: nn.Module, variables, batch: Batch) -> float:
    """SWAP (Peng et al., 2024): the number of distinct units' on/off patterns over the batch."""
    c = activation_codes(model, variables, batch)
    return float(len(np.unique(np.packbits(c.T, axis=1), axis=0)))


PROXIES: dict[str, Callable[[nn.Module, Any, Batch], float]] = {
    "grad_norm": grad_norm,
    "snip": snip,
    "synflow": synflow,
    "naswot": naswot,
    "swap": swap,
}


def score(name: str, model: nn.Module, variables, batch: Batch) -> float:
    """The proxy ``name`` (a key of :data:`PROXIES`) of ``model`` at ``variables``."""
    if name not in PROXIES:
        raise ValueError(f"Unknown zero-cost proxy {name!r}; choose one of {sorted(PROXIES)}.")
    return PROXIES[name](model, variables, batch)
