r"""Train-step throughput of archjax models vs the same networks in timm/PyTorch.

Both frameworks run the same network (same parameter count, checked), the same
batch and an SGD-momentum step, interleaved in rounds so that machine noise hits
both alike; the script prints images/s per round and the median ratio.

  python -m benchmarks.models                       # resnet50 @224 and CIFAR resnet20 @32
  python -m benchmarks.models --cases=resnet20 --rounds=5 --steps=20

Needs the ``compare`` extra (torch + timm). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax

from archjax import models, parallel
from archjax import train as T

# name -> (archjax model, image size, batch size)
CASES = {
    "resnet50": ("resnet50", 224, 16),
    "resnet20": ("resnet20", 32, 128),
}


def _torch_model(name: str, num_classes: int):
    """The torch twin of an archjax model: timm where it exists, else a local CIFAR ResNet."""
    import timm
    import torch.nn as nn

    if name == "resnet20":

        class Block(nn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(cout)
                self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.short = None
                if stride != 1 or cin != cout:
                    self.short = nn.Sequential(
                        nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                    )

            def forward(self, x):
                y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
                return (y + (x if self.short is None else self.short(x))).relu()

        layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        cin = 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                layers.append(Block(cin, width, 2 if i and not j else 1))
                cin = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
        return nn.Sequential(*layers)
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _jax_runner(name: str, size: int, batch: int, num_classes: int):
    model = models.create(name, num_classes=num_classes)
    tx = optax.sgd(0.01, momentum=0.9)
    mesh = parallel.make_mesh(1)
    state = T.create_train_state(
        model, tx, rng=jax.random.key(0), input_shape=(1, size, size, 3), mesh=mesh
    )
    step = T.jit_train_step(T.make_train_step(model, tx), mesh=mesh)
    rng = np.random.default_rng(0)
    data = parallel.shard_batch(
        {
            "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32),
        },
        mesh,
    )
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    box = [state]

    def run(steps: int) -> None:
        for _ in range(steps):
            box[0], metrics = step(box[0], data)
        jax.block_until_ready(metrics["loss"])

    return run, n_params


def _torch_runner(name: str, size: int, batch: int, num_classes: int):
    import torch

    net = _torch_model(name, num_classes).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, num_classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    n_params = sum(p.numel() for p in net.parameters())

    def run(steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

    return run, n_params


def _time(run, steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="resnet50,resnet20")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: per case)")
    args = parser.parse_args()
    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores | jax {jax.__version__} "
        f"on {jax.devices()[0].platform} | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    for case in args.cases.split(","):
        name, size, batch = CASES[case]
        steps = args.steps or (3 if size >= 224 else 20)
        jax_run, jax_params = _jax_runner(name, size, batch, 1000 if size >= 224 else 10)
        torch_run, torch_params = _torch_runner(name, size, batch, 1000 if size >= 224 else 10)
        if jax_params != torch_params:
            raise SystemExit(f"{case}: parameter counts differ ({jax_params} vs {torch_params})")
        jax_run(1), torch_run(1)  # compile / warm up
        ratios = []
        for r in range(args.rounds):
            t_jax = _time(jax_run, steps)
            t_torch = _time(torch_run, steps)
            ips_jax, ips_torch = steps * batch / t_jax, steps * batch / t_torch
            ratios.append(ips_jax / ips_torch)
            print(
                f"{case} @{size}px batch {batch} round {r + 1}: archjax {ips_jax:7.1f} img/s | "
                f"torch {ips_torch:7.1f} img/s | ratio {ratios[-1]:.2f}x",
                flush=True,
            )
        print(f"{case}: median ratio archjax/torch = {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
