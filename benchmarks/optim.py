r"""Optimizer-state bytes and update time: float32 vs 8-bit vs 4-bit Adam, side by side.

The pytree is ResNet-50's parameters (``jax.eval_shape`` of archjax ``resnet50``,
1000 classes, 25.6M parameters), filled with random values; each variant is
``optax.adam`` (float32 state) or ``archjax.optim.quantize_state(optax.adam, bits)``.
Reported per variant: state bytes (summed over the real arrays) and bytes per
parameter, and the median time of one jitted ``update + apply_updates`` with the
gradients passed as an argument and the parameters and state donated, as a train step
passes them (rounds interleaved across variants so that machine load hits all alike),
with ratios to float32: wall time and the process's CPU time (all threads; on a shared
machine the wall time also counts waiting for a core). The load average is printed
before and after.

  taskset -c 1 python -m benchmarks.optim --rounds=5
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from archjax import models, optim


def resnet50_params(num_classes: int = 1000):
    """Random float32 arrays with the shapes of archjax ResNet-50's parameters."""
    model = models.create("resnet50", num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    leaves, treedef = jax.tree.flatten(shapes["params"])
    keys = jax.random.split(jax.random.key(0), len(leaves))
    arrays = [
        jax.random.normal(k, s.shape, s.dtype) * 0.01 for k, s in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, arrays)


def _variant(bits: int) -> optax.GradientTransformation:
    adam = optax.adam(1e-3)
    return adam if bits == 32 else optim.quantize_state(adam, bits=bits)


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(rounds: int = 5, steps: int = 3) -> None:
    params = resnet50_params()
    n = sum(p.size for p in jax.tree.leaves(params))
    grads = jax.tree.map(lambda p: p * 0.1 + 1e-3, params)
    print(
        f"ResNet-50 pytree: {n / 1e6:.2f}M parameters, {len(jax.tree.leaves(params))} tensors; "
        f"jax {jax.__version__}, {jax.devices()[0].platform} x{jax.device_count()}; {_load()}"
    )
    variants = {}
    for bits in (32, 8, 4):
        tx = _variant(bits)

        # The parameters and the state are donated, as a train step donates them: every
        # variant may update its buffers in place.
        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        state = jax.jit(tx.init)(params)
        p = jax.tree.map(jnp.copy, params)  # donated below; params serves every variant
        p, state = step(p, state, grads)  # compile + first step
        jax.block_until_ready(state)
        variants[bits] = {"step": step, "state": state, "params": p, "wall": [], "cpu": []}
    for _ in range(rounds):
        for v in variants.values():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                v["params"], v["state"] = v["step"](v["params"], v["state"], grads)
            jax.block_until_ready(v["state"])
            v["wall"].append((time.perf_counter() - wall) / steps)
            v["cpu"].append((time.process_time() - cpu) / steps)
    base_bytes = optim.state_bytes(variants[32]["state"])
    base_wall = float(np.median(variants[32]["wall"]))
    base_cpu = float(np.median(variants[32]["cpu"]))
    print(
        f"{'state':>8} | {'MiB':>8} | {'B/param':>7} | {'x fp32':>6} | {'wall ms':>8} | "
        f"{'x fp32':>6} | {'cpu ms':>8} | {'x fp32':>6}"
    )
    for bits, v in variants.items():
        b = optim.state_bytes(v["state"])
        wall, cpu = float(np.median(v["wall"])), float(np.median(v["cpu"]))
        label = "float32" if bits == 32 else f"{bits}-bit"
        print(
            f"{label:>8} | {b / 2**20:8.1f} | {b / n:7.3f} | {b / base_bytes:6.3f} | "
            f"{wall * 1e3:8.1f} | {wall / base_wall:6.2f} | "
            f"{cpu * 1e3:8.1f} | {cpu / base_cpu:6.2f}"
        )
    print(_load())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    main(rounds=args.rounds, steps=args.steps)
