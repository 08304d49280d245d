"""Cheap studies for the engine's tests (pure Python; each trial takes milliseconds).

Workers run them as ``python -m archjax.studies work tests/studies/toy_study.py:<fn>``.
Every run of a trial appends its key to ``<study workdir>/runs.log`` (O_APPEND, one
short line: atomic), so a test can count how often each config really ran.
"""

import json
import os
import time

from archjax.studies import Study, grid

KEYS = ("x", "seed", "steps", "step_time")


def _log_run(trial, note=""):
    study_dir = os.path.dirname(os.path.dirname(trial.workdir))
    with open(os.path.join(study_dir, "runs.log"), "a") as f:
        f.write(f"{trial.key} {os.getpid()} {time.time():.3f} {note}\n")


def check(config):
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise KeyError(f"unknown config keys {unknown}; the trial knows {list(KEYS)}")


def quadratic(config, trial):
    """loss = (x - 3)^2 + seed / 100; x == 13 raises (the failing config)."""
    _log_run(trial)
    time.sleep(config.get("step_time", 0.0))
    if config["x"] == 13:
        raise ValueError("x = 13 is unlucky")
    for step in range(3):
        trial.report(step, float(config["x"] + step))
    return {"loss": (config["x"] - 3) ** 2 + config["seed"] / 100}


def checkpointed(config, trial):
    """``steps`` steps of ``step_time`` s, a checkpoint after each; resumes from it."""
    path = os.path.join(trial.workdir, "checkpoint.json")
    start = 0
    if os.path.exists(path):
        with open(path) as f:
            start = json.load(f)["step"]
    _log_run(trial, f"from={start}")
    for step in range(start, config["steps"]):
        time.sleep(config["step_time"])
        with open(path + ".tmp", "w") as f:
            json.dump({"step": step + 1}, f)
        os.replace(path + ".tmp", path)  # atomic: a kill never leaves half a file
    if config["x"] == 13:
        raise ValueError("x = 13 is unlucky")
    return {"loss": float(config["x"]), "resumed_from": start}


def grid24(quick=False):
    """24 configs, one of which (x = 13) raises."""
    return Study(
        name="grid24",
        configs=grid(x=list(range(1, 13)), seed=[0, 1])[:23] + [{"x": 13, "seed": 0}],
        trial=quadratic,
        fixed={"step_time": 0.02},
        check=check,
    )


def extended(quick=False):
    """grid24 plus two new configs (same trial function and fixed settings)."""
    base = grid24()
    return Study(**{**base.__dict__, "configs": [*base.configs, {"x": 20, "seed": 0},
                                                 {"x": 21, "seed": 0}]})  # fmt: skip


def resumable(quick=False):
    """Three slow checkpointed configs and one that raises after its steps."""
    return Study(
        name="resumable",
        configs=[{"x": 1}, {"x": 2}, {"x": 13}],
        trial=checkpointed,
        fixed={"steps": 12, "step_time": 0.25},
        check=check,
    )


def unknown_key(quick=False):
    """grid24 with a config key the trial function does not know."""
    return Study(**{**grid24().__dict__, "configs": [{"x": 1, "seed": 0, "lr": 0.1}]})


def other_function(quick=False):
    """The name grid24 with another trial function."""
    return Study(**{**grid24().__dict__, "trial": checkpointed})


def other_fixed(quick=False):
    """The name grid24 with other fixed settings."""
    return Study(**{**grid24().__dict__, "fixed": {"step_time": 0.5}})


def _join_distributed():
    from archjax import parallel

    parallel.initialize()  # from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID


def distributed_sum(config, trial):
    """One collective program over every process: sum of x * (process index + 1) per device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    _log_run(trial, f"process={jax.process_index()}")
    mesh = Mesh(np.array(jax.devices()), ("d",))
    local = np.full((jax.local_device_count(),), config["x"] * (jax.process_index() + 1), "f4")
    arr = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("d")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(arr)
    return {"loss": float(total), "process": jax.process_index(), "processes": jax.process_count()}


def slice_wide(quick=False):
    """Four trials, each a jax.distributed program over all processes."""
    return Study(
        name="slice_wide",
        configs=grid(x=[1, 2, 3, 4]),
        trial=distributed_sum,
        check=check,
        setup=_join_distributed,
    )


# A tiny but real run of the main job (digits at 8 px, a quarter-width ResNet-8).
TINY_TRAIN = {
    "model": "resnet8",
    "model_kwargs.width_multiplier": 0.25,
    "image_size": 8,
    "batch_size": 32,
    "eval_batch_size": 64,
    "num_steps": 4,
    "log_every": 2,
    "eval_every": 2,
    "checkpoint_every": 2,
    "warmup_steps": 1,
    "num_devices": 1,
}


def main_job(quick=False):
    """One trial of experiments.train.train_and_evaluate through the engine."""
    from experiments.studies import common  # the real package: workers run from the repo

    return Study(
        name="main_job",
        configs=[{"seed": 0}],
        trial=common.train_trial,
        fixed=TINY_TRAIN,
        objective="test_loss",
        check=common.check_train_config,
        setup=common.setup,
    )
