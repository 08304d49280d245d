"""One process of tests/parallel/test_multiprocess.py (not a test module itself).

    python tests/parallel/multiprocess_worker.py HOST:PORT PROCESS_ID WORKDIR

Joins a 2-process JAX run, trains a tiny ResNet for 3 steps on a data x fsdp
mesh spanning both processes (each feeds its own half of every batch), saves a
checkpoint, and writes its gathered parameters and losses to
``WORKDIR/process_<id>.npz``.
"""

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
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, parallel.shard_batch(next(it), mesh))
        losses.append(float(metrics["loss"]))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        ckpt.save(STEPS, state, data_state=it.get_state(), force=True)
    # FSDP leaves live partly on the other process: gather them to compare.
    params = multihost_utils.process_allgather(state.params, tiled=True)
    leaves = jax.tree_util.tree_leaves_with_path
    flat = {parallel.path_name(p): np.asarray(x) for p, x in leaves(params)}
    sharded = [k for k, x in leaves(state.params) if not x.is_fully_addressable]
    np.savez(
        os.path.join(workdir, f"process_{process_id}.npz"),
        losses=np.asarray(losses),
        num_cross_process_leaves=len(sharded),
        **{f"param:{k}": v for k, v in flat.items()},
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
