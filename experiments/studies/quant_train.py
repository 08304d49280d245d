"""What the quantization studies (zeroq, binary, fp8) share: digits in memory, a short
training run on archjax's one train step, accuracy, and a bar plot.

The main job (``common.train_trial``) checkpoints, logs and evaluates on a schedule;
these studies train many small models per trial and then post-process them (PTQ,
per-layer sensitivity), so they call the library's train step directly and keep the
variables in memory. Nothing is written to the trial's workdir.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from archjax import data
from archjax.quant import unquantized
from archjax.train import create_train_state, make_train_step


@functools.lru_cache(maxsize=4)
def digits(image_size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalized digits ``(x_train, y_train, x_test, y_test)`` (1438 / 359 images)."""
    out = []
    for split in ("train", "test"):
        ds = data.get_dataset("digits", split, image_size=image_size)
        xs, ys = [], []
        for b in data.eval_batches(ds, batch_size=512):
            keep = np.asarray(b["mask"]) > 0
            xs.append(np.asarray(b["image"])[keep])
            ys.append(np.asarray(b["label"])[keep])
        out += [np.concatenate(xs), np.concatenate(ys)]
    return tuple(out)


def train(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    seed: int,
    learning_rate: float = 3e-3,
    batch_size: int = 64,
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``steps`` Adam steps (cosine decay) of ``archjax.train.make_train_step``; the variables.

    ``init`` (e.g. a float model's variables, for QAT) replaces the fresh ``params`` and
    ``batch_stats``; the result then has no ``quant_stats`` (calibrate it afterwards).
    """
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    key = jax.random.key(seed)
    # QAT from float variables: the state is the float model's. A quantized model without
    # ``quant_stats`` quantizes activations with dynamic scales, as it does with the
    # uncalibrated ``quant_stats`` of its own ``init`` (whose values it never reads), so
    # the steps are the same; compiling that init (an MSE search per tensor) is not.
    base = unquantized(model) if init is not None else model
    state = create_train_state(base, tx, rng=key, input_shape=(1, *x.shape[1:]))
    if init is not None:
        state = state.replace(
            params=init["params"],
            batch_stats=init.get("batch_stats", state.batch_stats),
            opt_state=tx.init(init["params"]),
        )
    step = jax.jit(make_train_step(model, tx))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch_size)
        state, _ = step(state, {"image": jnp.asarray(x[idx]), "label": jnp.asarray(y[idx])})
    return jax.device_get(state.variables())


# The model is a static argument: a trial that evaluates one (hashable, frozen) module
# several times (PTQ, then QAT) compiles its forward pass once.
@functools.partial(jax.jit, static_argnums=0)
def _logits(model, variables, x):
    return model.apply(variables, x, train=False)


def accuracy(model, variables, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model.apply(variables, x, train=False)`` on the whole set."""
    logits = _logits(model, variables, jnp.asarray(x))
    return float(np.mean(np.asarray(logits).argmax(-1) == y))


def bar_plot(groups: dict[str, dict[str, float]], path: str, *, ylabel: str, title: str) -> str:
    """Grouped bars: ``{group: {bar: value}}``; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    bars = list(dict.fromkeys(k for g in groups.values() for k in g))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(bars) / 2), 4))
    width = 0.8 / max(len(bars), 1)
    for i, bar in enumerate(bars):
        vals = [groups[g].get(bar, np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, vals, width, label=bar)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, list(groups), rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
