"""One process of tests/parallel/test_multiprocess.py (not a test module itself).

    python tests/parallel/multiprocess_worker.py HOST:PORT PROCESS_ID WORKDIR

Joins a 2-process JAX run, trains a tiny ResNet for 3 steps on a data x fsdp
mesh spanning both processes (each feeds its own half of every batch), saves a
checkpoint, and writes its gathered parameters and losses to
``WORKDIR/process_<id>.npz``. Then, as a re-run would, restores the checkpoint
and a fresh data iterator from it, reads the rest of the first epoch, and writes
the examples both processes saw over the epoch (``epoch_seen``) and those that
fresh iterators that were never interrupted see (``epoch_uninterrupted``).
"""

import functools
import os
import sys

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from archjax import data, models, parallel
from archjax.checkpoint import Checkpointer
from archjax.train import create_train_state, jit_train_step, make_train_step

STEPS = 3


def main(address: str, process_id: int, workdir: str) -> None:
    assert parallel.initialize(address, num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    assert jax.local_device_count() == 4
    mesh = parallel.make_mesh(shape={"data": -1, "fsdp": 2})
    model = models.create("resnet8", num_classes=10, width_multiplier=0.25)
    tx = optax.sgd(0.1, momentum=0.9)
    ds = data.get_dataset("digits", "train", image_size=8)
    it = data.train_iterator(ds, batch_size=32, seed=0)  # this process's 16 examples
    state = create_train_state(
        model, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1), mesh=mesh
    )
    step = jit_train_step(make_train_step(model, tx), mesh=mesh, state=state)
    losses, seen = [], []
    for _ in range(STEPS):
        batch = next(it)
        seen.append(_example_ids(batch, ds))
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        ckpt.save(STEPS, state, data_state=it.get_state(), force=True)

    # The interruption: a fresh iterator resumes from the checkpoint's data state.
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        _, data_state = ckpt.restore(target)
    resumed = data.train_iterator(ds, batch_size=32, seed=0)
    resumed.set_state(data_state)
    per_epoch = len(range(process_id, len(ds.source), 2)) // 16
    seen += [_example_ids(next(resumed), ds) for _ in range(per_epoch - STEPS)]
    fresh = data.train_iterator(ds, batch_size=32, seed=0)
    uninterrupted = [_example_ids(next(fresh), ds) for _ in range(per_epoch)]
    epoch = {
        "epoch_seen": np.concatenate(seen),
        "epoch_uninterrupted": np.concatenate(uninterrupted),
    }
    epoch = multihost_utils.process_allgather(epoch)  # [process, example]
    # FSDP leaves live partly on the other process: gather them to compare.
    params = multihost_utils.process_allgather(state.params, tiled=True)
    leaves = jax.tree_util.tree_leaves_with_path
    flat = {parallel.path_name(p): np.asarray(x) for p, x in leaves(params)}
    sharded = [k for k, x in leaves(state.params) if not x.is_fully_addressable]
    np.savez(
        os.path.join(workdir, f"process_{process_id}.npz"),
        losses=np.asarray(losses),
        num_cross_process_leaves=len(sharded),
        **epoch,
        **{f"param:{k}": v for k, v in flat.items()},
    )


@functools.cache
def _ids(ds: data.Dataset) -> dict[bytes, int]:
    return {np.asarray(ds.source[i]["image"]).tobytes(): i for i in range(len(ds.source))}


def _example_ids(batch: dict, ds: data.Dataset) -> np.ndarray:
    """Each example's index in ``ds`` (the digits train images are all distinct)."""
    # Undo the pipeline's normalisation (no augmentation here) to the stored uint8 pixels.
    pixels = (np.asarray(batch["image"]) * np.float32(ds.std) + np.float32(ds.mean)) * 255
    pixels = np.rint(pixels).astype(np.uint8)
    return np.asarray([_ids(ds)[p.tobytes()] for p in pixels])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
