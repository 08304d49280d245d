r"""Where archjax loses train-step time to PyTorch on CPU: forward pass vs one conv.

Times, side by side in one run, (a) the eval-mode forward pass of CIFAR ResNet-20
(batch 128, 32 px) and (b) a single 3x3 16->16 convolution at 32x32 (the most
common conv of that network), in JAX/XLA and in PyTorch; prints the ratios
(torch time / jax time; below 1 means JAX is slower). Compare with the train-step
ratio of ``benchmarks/models.py`` to see how much the backward pass adds.

  python -m benchmarks.conv_breakdown
"""

from __future__ import annotations

import time

import jax
import numpy as np
import torch

from archjax import models
from benchmarks.models import _torch_model


def _seconds(fn, n: int = 10) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main(rounds: int = 2) -> None:
    model = models.create("resnet20", num_classes=10)
    x = np.random.default_rng(0).normal(size=(128, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    xs = np.random.default_rng(1).normal(size=(128, 32, 32, 16)).astype(np.float32)
    ws = np.random.default_rng(2).normal(size=(3, 3, 16, 16)).astype(np.float32)
    torch_net = _torch_model("resnet20", 10).eval()
    torch_conv = torch.nn.Conv2d(16, 16, 3, 1, 1, bias=False)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    xst = torch.from_numpy(xs.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for r in range(rounds):
            fj = _seconds(lambda: forward(variables, x).block_until_ready())
            ft = _seconds(lambda: torch_net(xt))
            cj = _seconds(lambda: conv(xs, ws).block_until_ready())
            ct = _seconds(lambda: torch_conv(xst))
            print(
                f"round {r + 1}: resnet20 forward jax {fj * 1e3:.1f} ms, torch {ft * 1e3:.1f} ms "
                f"(ratio {ft / fj:.2f}) | conv 3x3 16->16 @32 jax {cj * 1e3:.1f} ms, "
                f"torch {ct * 1e3:.1f} ms (ratio {ct / cj:.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
