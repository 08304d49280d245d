"""Two local processes, 4 CPU devices each, one JAX run (acceptance item 2).

The processes talk through jax.distributed (coordinator on 127.0.0.1, gloo CPU
collectives), train on a data x fsdp mesh over all 8 devices and checkpoint.
"""

import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import optax

from archjax import models, parallel
from archjax.checkpoint import Checkpointer
from archjax.train import abstract_train_state
from tests.conftest import TEST_XLA_FLAGS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint_identically(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    # tests/conftest.py asked for 8 devices in this process; each worker has 4.
    env["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=4", *TEST_XLA_FLAGS])
    worker = os.path.join(HERE, "multiprocess_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, address, str(i), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]

    results = [dict(np.load(tmp_path / f"process_{i}.npz")) for i in range(2)]
    assert int(results[0]["num_cross_process_leaves"]) > 0  # FSDP really spans processes
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)
    assert results[0]["losses"][0] != results[0]["losses"][-1]

    # The checkpoint both wrote (2 processes x 4 devices, FSDP) is one consistent state,
    # readable by one process on 1 device and on 8 devices (FSDP over another mesh).
    model = models.create("resnet8", num_classes=10, width_multiplier=0.25)
    tx = optax.sgd(0.1, momentum=0.9)
    restored = {}
    for mesh in (parallel.make_mesh(1), parallel.make_mesh(8, shape={"data": -1, "fsdp": 4})):
        target = abstract_train_state(model, tx, input_shape=(1, 8, 8, 1), mesh=mesh)
        with Checkpointer(tmp_path / "checkpoints") as ckpt:
            assert ckpt.all_steps() == [3]
            state, data_state = ckpt.restore(target)
        assert data_state == {"next_index": 3}
        restored[mesh.size] = {
            f"param:{parallel.path_name(p)}": np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(state.params)
        }
    assert any(  # the 8-device restore really is sharded
        not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params)
    )
    written = {k: v for k, v in results[0].items() if k.startswith("param:")}
    chex.assert_trees_all_equal(restored[1], written)
    chex.assert_trees_all_equal(restored[8], written)

    # Over the first epoch, interrupted after step 3 and resumed from the checkpoint's
    # data state, both processes together see every example once, in the order of an
    # uninterrupted run; only each shard's last len % 16 examples are dropped (by design).
    seen = results[0]["epoch_seen"]
    np.testing.assert_array_equal(seen, results[0]["epoch_uninterrupted"])
    assert np.all(seen[0] % 2 == 0) and np.all(seen[1] % 2 == 1)  # shard i is source[i::2]
    assert len(np.unique(seen)) == seen.size  # no repeats
    assert [1438 - seen.size] == [(719 % 16) * 2]  # no skips but the dropped remainders
