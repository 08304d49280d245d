r"""Checkpoint throughput vs raw disk, and how long an async save blocks training.

For a ResNet-50-sized train state (parameters, SGD momentum, BatchNorm
statistics: about 51M float32 values, ~205 MB) the script measures, in one run
and on the same directory:

- raw disk write MB/s: the same bytes written to one file with ``fsync``;
- synchronous save MB/s (:class:`archjax.checkpoint.Checkpointer`, Orbax/OCDBT,
  per-leaf checksums included);
- restore MB/s into an abstract target (checksums verified);
- async save: the time ``save()`` blocks the caller vs a synchronous save.

  python -m benchmarks.checkpoint                    # ResNet-50, 3 rounds, under /tmp
  python -m benchmarks.checkpoint --model=resnet18 --rounds=2 --dir=/mnt/disk/bench

Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from archjax import models
from archjax.checkpoint import Checkpointer
from archjax.train import abstract_train_state


def random_state(name: str, seed: int = 0):
    """A train state of model ``name`` (ImageNet head) filled with random values.

    Random rather than initialised values: zeros (momentum, biases) would
    flatter any compressing writer.
    """
    model = models.create(name, num_classes=1000)
    abstract = abstract_train_state(
        model, optax.sgd(0.1, momentum=0.9), input_shape=(1, 224, 224, 3)
    )
    rng = np.random.default_rng(seed)

    def fill(x):
        if np.issubdtype(x.dtype, np.floating):
            return jax.device_put(rng.standard_normal(x.shape, dtype=np.float32).astype(x.dtype))
        return jax.device_put(np.zeros(x.shape, x.dtype))

    return abstract, jax.tree.map(fill, abstract)


def nbytes(tree) -> int:
    """Total bytes of the arrays in ``tree``."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def raw_write_seconds(state, path: str) -> float:
    """Seconds to write the state's bytes to one file and fsync it."""
    host = [np.asarray(x) for x in jax.tree.leaves(state)]
    start = time.perf_counter()
    with open(path, "wb") as f:
        for x in host:
            f.write(x.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def one_round(state, abstract, root: str, step: int) -> dict[str, float]:
    """Raw write, sync save, restore and async save (blocking and total) in one directory."""
    out = {"raw_write": raw_write_seconds(state, os.path.join(root, f"raw_{step}.bin"))}
    sync_dir, async_dir = os.path.join(root, f"sync_{step}"), os.path.join(root, f"async_{step}")
    with Checkpointer(sync_dir, async_save=False, max_to_keep=None) as ckpt:
        start = time.perf_counter()
        ckpt.save(step, state, force=True)
        out["sync_save"] = time.perf_counter() - start
        start = time.perf_counter()
        restored, _ = ckpt.restore(abstract, step=step)
        jax.block_until_ready(restored)
        out["restore"] = time.perf_counter() - start
    with Checkpointer(async_dir, async_save=True, max_to_keep=None) as ckpt:
        start = time.perf_counter()
        ckpt.save(step, state, force=True)
        out["async_blocking"] = time.perf_counter() - start
        ckpt.wait_until_finished()
        out["async_total"] = time.perf_counter() - start
    # Orbax alone (no checksums, no archjax checks): its own blocking part.
    plain_dir = os.path.join(root, f"plain_{step}")
    manager = ocp.CheckpointManager(
        plain_dir, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
    )
    start = time.perf_counter()
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    out["orbax_async_blocking"] = time.perf_counter() - start
    manager.wait_until_finished()
    manager.close()
    for name in (sync_dir, async_dir, plain_dir):
        shutil.rmtree(name)
    os.remove(os.path.join(root, f"raw_{step}.bin"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a new temp dir)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="archjax_ckpt_bench_", dir=args.dir)
    abstract, state = random_state(args.model)
    size_mb = nbytes(state) / 1e6
    print(
        f"{args.model} train state: {size_mb:.0f} MB in {len(jax.tree.leaves(state))} arrays; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, dir {root}"
    )
    rounds = []
    warm = one_round(state, abstract, root, 0)  # compiles checksums, warms the page cache
    print("warm-up round (not counted):", {k: round(v, 3) for k, v in warm.items()})
    for r in range(1, args.rounds + 1):
        res = one_round(state, abstract, root, r)
        rounds.append(res)
        print(
            f"round {r}: raw write {size_mb / res['raw_write']:.0f} MB/s | "
            f"sync save {size_mb / res['sync_save']:.0f} MB/s | "
            f"restore {size_mb / res['restore']:.0f} MB/s | "
            f"async save blocks {res['async_blocking']:.3f} s vs sync {res['sync_save']:.3f} s "
            f"({100 * res['async_blocking'] / res['sync_save']:.1f}%), "
            f"async total {res['async_total']:.3f} s; "
            f"plain orbax async blocks {res['orbax_async_blocking']:.3f} s",
            flush=True,
        )
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(
        f"median of {len(rounds)}: raw write {size_mb / med['raw_write']:.0f} MB/s, "
        f"save {size_mb / med['sync_save']:.0f} MB/s "
        f"({med['raw_write'] / med['sync_save']:.2f}x raw), "
        f"restore {size_mb / med['restore']:.0f} MB/s, "
        f"async blocking / sync save = {100 * med['async_blocking'] / med['sync_save']:.1f}% "
        f"(plain orbax: {100 * med['orbax_async_blocking'] / med['sync_save']:.1f}%)"
    )
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
