r"""QAT train-step time / float train-step time for a CIFAR ResNet on this CPU.

Builds the main job's train step (archjax.train.make_train_step, SGD+Nesterov) for
the float ResNet and for ``archjax.quant.quantize_model(model, rules)`` with each scheme,
and times them in interleaved rounds in one process (same data, same batch), so the
printed ratios are side by side. Target (issue 4): w8a8 QAT <= 1.15x float.

  python -m benchmarks.quant                                  # resnet20, 16 px, batch 128
  python -m benchmarks.quant --model=resnet20 --image_size=32 --rounds=3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import optax

from archjax import models
from archjax.quant import IntFormat, QuantRule, first_last_rules, quantize_model
from archjax.train import create_train_state, make_train_step

INT8, INT4 = IntFormat(bits=8), IntFormat(bits=4)
SCHEMES = {
    "w8a8": [QuantRule(pattern=".*", weight=INT8, activation=INT8)],
    "w4a4": first_last_rules(INT8, INT4, activation=INT4),
}


def _step_seconds(step, state, batch, n: int) -> tuple[float, object]:
    state, m = step(state, batch)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(n):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return (time.perf_counter() - start) / n, state


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, args.channels)
    batch = {
        "image": rng.normal(size=shape).astype(np.float32),
        "label": rng.integers(0, 10, size=args.batch_size).astype(np.int32),
    }
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    base = models.create(args.model, num_classes=10)
    cases = {"float": base, **{k: quantize_model(base, r) for k, r in SCHEMES.items()}}
    steps, states = {}, {}
    for name, model in cases.items():
        states[name] = create_train_state(
            model, tx, rng=jax.random.key(0), input_shape=(1, *shape[1:])
        )
        steps[name] = jax.jit(make_train_step(model, tx))
    times = {name: [] for name in cases}
    print(
        f"{args.model}, {args.image_size} px, batch {args.batch_size}, {jax.device_count()} "
        f"device(s) {jax.devices()[0].platform}; ms/step per round:",
        flush=True,
    )
    for r in range(args.rounds):
        for name in cases:
            t, states[name] = _step_seconds(steps[name], states[name], batch, args.steps)
            times[name].append(t)
        row = ", ".join(f"{n} {times[n][-1] * 1e3:.1f}" for n in cases)
        print(f"round {r + 1}: {row}", flush=True)
    f = statistics.median(times["float"])
    for name in SCHEMES:
        ratio = statistics.median(times[name]) / f
        print(f"{name} QAT / float train step (median of rounds): {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
