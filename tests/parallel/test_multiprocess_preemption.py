"""One preemption for all hosts (issue 15, section 2), with the main job on 2 processes.

SIGTERM reaches ONE of two processes (2 CPU devices each) at a random moment; the
distributed runtime's preemption sync point makes both save the same step and exit
with 128 + SIGTERM. The re-run resumes there and ends bitwise equal to a 2-process run
that nobody interrupted.
"""

import os
import random
import signal
import subprocess
import sys
import time

import chex

from tests.conftest import TEST_XLA_FLAGS
from tests.experiments.test_train import _final_state, _overrides_as_flags, tiny_config
from tests.parallel.test_multiprocess import REPO, _free_port

# All 4 devices of both processes, FSDP across the two; 30 steps (>= 6 s here) after the
# first checkpoint, so the signal, which the runtime's notifier polls for once a second,
# lands well before the end.
RUN = dict(num_steps=40, checkpoint_every=10, log_every=10, eval_every=40, num_devices=4)
MESH = {"mesh.fsdp": 2}
DEVICES_PER_PROCESS = 2


def _launch(workdir: str) -> list[subprocess.Popen]:
    """Starts the main job as 2 processes of one jax.distributed run."""
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    devices = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    env["XLA_FLAGS"] = " ".join([devices, *TEST_XLA_FLAGS])
    flags = [*_overrides_as_flags(**RUN), *(f"--config.{k}={v}" for k, v in MESH.items())]
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.train",
                f"--workdir={workdir}",
                *flags,
                f"--config.distributed.coordinator_address={address}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return outs


def _config():
    config = tiny_config(**RUN)
    config.mesh.fsdp = MESH["mesh.fsdp"]
    return config


def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path):
    reference = str(tmp_path / "reference")
    outs = _wait(_launch(reference))
    assert [p for p in outs if "Done: test accuracy" not in p] == [], outs[0][-3000:]

    workdir = str(tmp_path / "preempted")
    procs = _launch(workdir)
    first_ckpt = os.path.join(workdir, "checkpoints", str(RUN["checkpoint_every"]))
    deadline = time.time() + 600
    while not os.path.isdir(first_ckpt) and procs[0].poll() is None and time.time() < deadline:
        time.sleep(0.1)
    victim, delay = random.randrange(2), random.uniform(0.0, 0.5)
    time.sleep(delay)
    if any(p.poll() is not None for p in procs):
        outs = _wait(procs)
        raise AssertionError(
            f"a process ended before the signal:\n{outs[0][-2000:]}\n{outs[1][-2000:]}"
        )
    procs[victim].send_signal(signal.SIGTERM)
    outs = _wait(procs)
    info = f"(SIGTERM to process {victim} after {delay:.2f} s)"
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 128 + signal.SIGTERM, f"{info}\n{out[-3000:]}"
    _, steps = _final_state(workdir, _config())
    stopped_at = steps[-1]
    assert RUN["checkpoint_every"] <= stopped_at < RUN["num_steps"], (steps, info)
    said = (
        f"Preemption notice (SIGTERM to one of 2 processes): saved a checkpoint at step "
        f"{stopped_at}."
    )
    assert all(said in out for out in outs), (info, [out[-1500:] for out in outs])

    outs = _wait(_launch(workdir))
    for out in outs:
        assert f"Resuming from step {stopped_at}" in out, out[-3000:]
        assert "Done: test accuracy" in out and f"steps {RUN['num_steps']}" in out, out[-3000:]
    resumed, _ = _final_state(workdir, _config())
    uninterrupted, _ = _final_state(reference, _config())
    chex.assert_trees_all_equal(resumed, uninterrupted)  # bitwise
