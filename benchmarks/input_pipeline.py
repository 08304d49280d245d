r"""Does the input pipeline starve the train step? End-to-end vs step-only throughput.

Each case builds the main job's pieces from its config (experiments/train.py: dataset,
model, optimizer, recipe, the jitted train step) and times, in interleaved rounds:

- step-only: the train step on batches already on the devices;
- end-to-end: the main job's loop, `next()` on ``archjax.data.train_iterator`` (grain
  reading, host augmentation, ``parallel.shard_batch`` prefetched to the devices) feeding
  the same step, metrics summed on the devices and read once at the end, as at log time;
- with ``--old-loop`` also the loop before prefetching: transfer inline and a host read of
  the metrics after every step.

Every end-to-end round starts from a fresh iterator whose first batch is taken before the
clock starts, so the timed steps begin with nearly empty buffers rather than full ones. The
script prints images/s per round and the median of end-to-end / step-only per case, plus the
host pipeline alone (ms per batch, device idle) for scale.

  python -m benchmarks.input_pipeline                     # resnet20 @32 px, resnet50 @224 px
  python -m benchmarks.input_pipeline --cases=resnet20 --rounds=5 --old-loop

Results go to docs/benchmarks.md (with the machine load: on a shared CPU the step and the
host pipeline compete for the same cores).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import jax
import numpy as np

from archjax import data, models, parallel
from archjax.train import create_train_state, jit_train_step, make_train_step
from experiments import config_utils
from experiments import train as main_job

# name -> main-job config overrides and (steps per round on a CPU, on an accelerator).
CASES = {
    # CIFAR-style ResNet-20 on the digits resized to 32 px, the main job's augmentation.
    "resnet20": (
        dict(model="resnet20", dataset="digits", image_size=32, batch_size=128),
        (12, 100),
    ),
    # A ResNet-50-sized input: generated shapes at 224 px, RGB, small batch.
    "resnet50": (
        dict(
            model="resnet50",
            dataset="shapes",
            image_size=224,
            batch_size=8,
            random_crop_pad=8,
            random_flip=True,
            dataset_kwargs={"num_examples": 256},
        ),
        (3, 50),
    ),
}


class Case:
    """The main job's dataset, state and jitted step for one config."""

    def __init__(self, overrides: dict):
        config = config_utils.load_config()
        config.update({k: v for k, v in overrides.items() if k != "dataset_kwargs"})
        config.dataset_kwargs.update(overrides.get("dataset_kwargs", {}))
        config.num_devices = 1
        config_utils.validate(config)
        self.config = config
        self.mesh = parallel.make_mesh(config.num_devices, shape=config.mesh.to_dict())
        self.ds, _ = main_job.datasets(config)
        model = models.create(config.model, **main_job.model_kwargs(config, self.ds.num_classes))
        tx = main_job.create_optimizer(config)
        self.state = create_train_state(
            model,
            tx,
            rng=jax.random.key(config.seed),
            input_shape=(1, *self.ds.image_shape),
            mesh=self.mesh,
        )
        self.step = jit_train_step(
            make_train_step(model, tx, recipe=main_job.create_recipe(config, self.ds)),
            mesh=self.mesh,
            state=self.state,
        )

    def iterator(self, seed: int, *, prefetch: bool = True):
        c = self.config
        return data.train_iterator(
            self.ds,
            batch_size=c.batch_size,
            seed=seed,
            random_crop_pad=c.random_crop_pad,
            random_flip=c.random_flip,
            device_put=functools.partial(parallel.shard_batch, mesh=self.mesh)
            if prefetch
            else None,
        )

    def run(self, batches, steps: int) -> float:
        """Seconds for `steps` steps of the main job's loop over `batches` (an iterator)."""
        sums = None
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, next(batches))
            sums = metrics if sums is None else main_job.add_metrics(sums, metrics)
        jax.device_get(sums)  # the log-time read
        return time.perf_counter() - start

    def run_old_loop(self, batches, steps: int) -> float:
        """The loop before prefetching: inline transfer, host sum of the metrics every step."""
        sums = None
        start = time.perf_counter()
        for _ in range(steps):
            batch = parallel.shard_batch(next(batches), self.mesh)
            self.state, metrics = self.step(self.state, batch)
            sums = metrics if sums is None else jax.tree.map(np.add, sums, metrics)
        jax.device_get(sums)
        return time.perf_counter() - start


def _resident(case: Case, count: int = 4):
    """An endless cycle over `count` batches that already live on the devices."""
    it = case.iterator(seed=1000)
    batches = [next(it) for _ in range(count)]
    jax.block_until_ready(batches)
    it.close()
    while True:
        yield from batches


def _fresh(case: Case, seed: int, **kwargs):
    """A new iterator whose first batch is already taken (the pipeline is running)."""
    it = case.iterator(seed, **kwargs)
    jax.block_until_ready(next(it))
    return it


def _host_ms_per_batch(case: Case, count: int = 10) -> float:
    it = case.iterator(seed=2000, prefetch=False)
    next(it)
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    it.close()
    return (time.perf_counter() - start) / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="resnet20,resnet50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: per case)")
    parser.add_argument("--old-loop", action="store_true", help="also time the old loop")
    args = parser.parse_args()
    unknown = sorted(set(args.cases.split(",")) - set(CASES))
    if unknown:
        raise SystemExit(f"Unknown case(s) {unknown}; allowed: {sorted(CASES)}.")
    device = jax.devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load {load:.1f} | "
        f"jax {jax.__version__} on {device.platform} ({device.device_kind})",
        flush=True,
    )
    accelerator = device.platform != "cpu"
    for name in args.cases.split(","):
        overrides, default_steps = CASES[name]
        steps = args.steps or default_steps[accelerator]
        case = Case(overrides)
        batch = case.config.batch_size
        resident = _resident(case)
        case.run(resident, 2)  # compile
        case.run(_fresh(case, seed=0), 2)
        host_ms = _host_ms_per_batch(case)
        ratios, old_ratios = [], []
        for r in range(args.rounds):
            t_step = case.run(resident, steps)
            it = _fresh(case, seed=r + 1)
            t_e2e = case.run(it, steps)
            it.close()
            ratios.append(t_step / t_e2e)
            line = (
                f"{name} @{case.config.image_size}px batch {batch} round {r + 1}: "
                f"step-only {steps * batch / t_step:7.1f} img/s | "
                f"end-to-end {steps * batch / t_e2e:7.1f} img/s ({ratios[-1]:.3f})"
            )
            if args.old_loop:
                it = _fresh(case, seed=r + 1, prefetch=False)
                t_old = case.run_old_loop(it, steps)
                it.close()
                old_ratios.append(t_step / t_old)
                line += f" | old loop {steps * batch / t_old:7.1f} img/s ({old_ratios[-1]:.3f})"
            print(line, flush=True)
        step_ms = 1e3 * t_step / steps
        print(
            f"{name}: end-to-end / step-only = {statistics.median(ratios):.3f} (median of "
            f"{args.rounds} rounds, {steps} steps each)"
            + (f"; old loop {statistics.median(old_ratios):.3f}" if old_ratios else "")
            + f"; host pipeline alone {host_ms:.1f} ms/batch vs step {step_ms:.1f} ms",
            flush=True,
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load at the end: {load:.1f}")


if __name__ == "__main__":
    main()
