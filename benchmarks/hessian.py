r"""Cost of one Hutchinson probe (one Hessian-vector product) relative to one gradient.

On CIFAR ResNet-20 (eval-mode BatchNorm, random data), times side by side in
interleaved rounds: (a) ``jax.grad`` of the loss, (b) one HVP with
``archjax.analysis.hvp`` (forward-over-reverse), (c) one probe of
``archjax.analysis.hutchinson_trace`` (HVP + Rademacher draw + dot products, per
probe of an 8-probe run). Prints the milliseconds and the ratios to the gradient;
the issue's target is a probe <= 3x a gradient.

  python -m benchmarks.hessian                       # 16 and 32 px, batch 64
  python -m benchmarks.hessian --sizes=32 --batch=128 --rounds=5
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from archjax import analysis, models


def _seconds(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def bench(size: int, batch_size: int, rounds: int, n: int, probes: int = 8) -> None:
    model = models.create("resnet20", num_classes=10)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, 10, size=batch_size).astype(np.int32),
    }
    variables = jax.jit(lambda k: model.init(k, batch["image"][:1], train=False))(jax.random.key(0))
    params = variables["params"]
    loss_fn = analysis.classifier_loss(model, variables)
    grad = jax.jit(jax.grad(loss_fn))
    v = jax.tree.map(lambda p: jax.random.rademacher(jax.random.key(1), p.shape, p.dtype), params)
    key = jax.random.key(2)

    def run_grad():
        jax.block_until_ready(grad(params, batch))

    def run_hvp():
        jax.block_until_ready(analysis.hvp(loss_fn, params, batch, v))

    def run_probe():
        analysis.hutchinson_trace(loss_fn, params, batch, key=key, num_probes=probes)

    for fn in (run_grad, run_hvp, run_probe):  # compile
        fn()
    ratios_hvp, ratios_probe = [], []
    for r in range(rounds):
        g = _seconds(run_grad, n)
        h = _seconds(run_hvp, n)
        p = _seconds(run_probe, 1) / probes
        ratios_hvp.append(h / g)
        ratios_probe.append(p / g)
        print(
            f"resnet20 {size}px batch {batch_size} round {r + 1}: grad {g * 1e3:.1f} ms, "
            f"hvp {h * 1e3:.1f} ms ({h / g:.2f}x), hutchinson probe {p * 1e3:.1f} ms "
            f"({p / g:.2f}x)",
            flush=True,
        )
    print(
        f"resnet20 {size}px batch {batch_size}: median hvp/grad "
        f"{statistics.median(ratios_hvp):.2f}x, probe/grad {statistics.median(ratios_probe):.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,32", help="image sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="calls per timing")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    for size in (int(s) for s in args.sizes.split(",")):
        bench(size, args.batch, args.rounds, args.steps)


if __name__ == "__main__":
    main()
