r"""Train-step throughput of archjax models vs the same networks in timm/PyTorch.

Both frameworks run the same network (same parameter count, checked), the same
batch and an SGD-momentum step, interleaved in rounds so that machine noise hits
both alike; the script prints images/s per round and the median ratio.

  python -m benchmarks.models                       # resnet50 @224 and CIFAR resnet20 @32
  python -m benchmarks.models --cases=resnet20 --rounds=5 --steps=20
  python -m benchmarks.models --dtype=bfloat16 --batch=256,1024   # on a GPU

On a GPU both sides run in bf16 (archjax: ``dtype=bfloat16`` compute with float32
parameters; torch: ``autocast(bfloat16)`` with channels-last tensors, eager
mode, cuDNN autotuning on), and the script also prints model-FLOPs utilization:
3 x forward FLOPs per image (backward ~ 2 x forward) x img/s / peak bf16 FLOP/s.

Needs the ``compare`` extra (torch + timm). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from archjax import models, parallel
from archjax.train import create_train_state, jit_train_step, make_train_step

# name -> (archjax model, image size, batch size)
CASES = {
    "resnet50": ("resnet50", 224, 16),
    "resnet20": ("resnet20", 32, 128),
    "vit_small_patch16_224": ("vit_small_patch16_224", 224, 16),
    "vit_tiny_patch16_224": ("vit_tiny_patch16_224", 224, 16),
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


# Dense bf16 peak of the accelerator, for model-FLOPs utilization (vendor datasheets).
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def _peak_tflops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_kind), None)


def _forward_flops(name: str, size: int, num_classes: int) -> float:
    """Forward FLOPs per image (multiply-add = 2), from XLA:CPU cost analysis."""
    with jax.default_device(jax.devices("cpu")[0]):
        model = models.create(name, num_classes=num_classes)
        return models.count_flops(model, (1, size, size, 3))


def _jax_runner(name: str, size: int, batch: int, num_classes: int, dtype: str, **knobs):
    """A closure that runs ``steps`` jitted SGD-momentum train steps on one fixed batch."""
    model = models.create(name, num_classes=num_classes, dtype=jnp.dtype(dtype), **knobs)
    tx = optax.sgd(0.01, momentum=0.9)
    mesh = parallel.make_mesh(1)
    state = create_train_state(
        model, tx, rng=jax.random.key(0), input_shape=(1, size, size, 3), mesh=mesh
    )
    step = jit_train_step(make_train_step(model, tx), mesh=mesh)
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


def _torch_runner(name: str, size: int, batch: int, num_classes: int, dtype: str):
    import contextlib

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    net = _torch_model(name, num_classes).train().to(device, memory_format=memory_format)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    n_params = sum(p.numel() for p in net.parameters())
    if dtype == "float32":
        autocast = contextlib.nullcontext
    else:
        autocast = lambda: torch.autocast(device, dtype=getattr(torch, dtype))

    def run(steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()

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
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", default="", help="comma-separated batch sizes, one per case")
    args = parser.parse_args()
    import torch

    cases = args.cases.split(",")
    batches = [int(b) for b in args.batch.split(",")] if args.batch else []
    if batches and len(batches) != len(cases):
        raise SystemExit(f"--batch gives {len(batches)} sizes for {len(cases)} cases")
    device_kind = jax.devices()[0].device_kind
    peak = _peak_tflops(device_kind) if jax.devices()[0].platform == "gpu" else None

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores | jax {jax.__version__} "
        f"on {jax.devices()[0].platform} | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        f" | device {device_kind} | dtype {args.dtype}"
    )
    for i, case in enumerate(cases):
        name, size, batch = CASES[case]
        batch = batches[i] if batches else batch
        classes = 1000 if size >= 224 else 10
        steps = args.steps or (3 if size >= 224 else 20)
        jax_run, jax_params = _jax_runner(name, size, batch, classes, args.dtype)
        torch_run, torch_params = _torch_runner(name, size, batch, classes, args.dtype)
        if jax_params != torch_params:
            raise SystemExit(f"{case}: parameter counts differ ({jax_params} vs {torch_params})")
        jax_run(1), torch_run(1)  # compile / warm up
        ratios, jax_ips, torch_ips = [], [], []
        for r in range(args.rounds):
            t_jax = _time(jax_run, steps)
            t_torch = _time(torch_run, steps)
            ips_jax, ips_torch = steps * batch / t_jax, steps * batch / t_torch
            ratios.append(ips_jax / ips_torch)
            jax_ips.append(ips_jax)
            torch_ips.append(ips_torch)
            print(
                f"{case} @{size}px batch {batch} round {r + 1}: archjax {ips_jax:7.1f} img/s | "
                f"torch {ips_torch:7.1f} img/s | ratio {ratios[-1]:.2f}x",
                flush=True,
            )
        print(f"{case}: median ratio archjax/torch = {statistics.median(ratios):.2f}x")
        if peak:
            train_flops = 3 * _forward_flops(name, size, classes)
            for who, ips in (("archjax", jax_ips), ("torch", torch_ips)):
                mfu = statistics.median(ips) * train_flops / (peak * 1e12)
                print(
                    f"{case}: {who} {statistics.median(ips):.0f} img/s x "
                    f"{train_flops / 1e9:.2f} GFLOP/img (3 x forward) = MFU {mfu:.1%} "
                    f"of {peak:.0f} TFLOP/s bf16 peak ({device_kind})"
                )


if __name__ == "__main__":
    main()
