"""Multi-process (multi-host) setup through JAX's own multi-controller runtime.

Every process runs the same program; ``jax.distributed.initialize`` connects them
to one coordinator, after which ``jax.devices()`` lists the devices of *all*
processes and a ``jax.jit`` over a mesh of them is one global program. Each
process feeds only its own slice of the batch (``archjax.data.train_iterator``
shards by ``jax.process_index()``), and ``archjax.parallel.shard_batch``
assembles the global batch with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os

import jax

# Read by jax.distributed itself (coordinator) and by archjax (the other two), so a
# launcher can configure every process through the environment alone.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} must be an integer.") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
) -> bool:
    """Joins this process to a multi-process JAX run, once; a no-op for one process.

    Arguments left ``None`` come from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; if still unset and
    ``auto_detect``, JAX detects them (TPU VM slices, SLURM, Open MPI, GKE).
    Must run before anything asks JAX for its devices. On CPU it selects the gloo
    collectives, without which cross-process all-reduces are not implemented.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: total number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      auto_detect: call ``jax.distributed.initialize()`` even with nothing set
        (the TPU VM pod-slice case, where every worker runs the same command).

    Returns:
      Whether JAX now runs with more than one process (``False`` when nothing was
      configured: single-process runs need no initialization).

    Raises:
      ValueError: only some of the three values are set, or ``process_id`` is out
        of range.

    Example:
      >>> initialize("10.0.0.1:1234", num_processes=2, process_id=int(sys.argv[1]))
      >>> jax.device_count()   # devices of both processes
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if all(v is None for v in given.values()) and not auto_detect:
        return False
    if not auto_detect and any(v is None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        raise ValueError(
            f"Multi-process setup needs coordinator_address, num_processes and process_id; "
            f"missing {missing} (config.distributed.* or {ENV_COORDINATOR}, "
            f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or set auto_detect on a TPU VM / SLURM."
        )
    known = num_processes is not None and process_id is not None
    if known and (num_processes < 1 or not 0 <= process_id < num_processes):
        raise ValueError(
            f"process_id must be in [0, num_processes), got process_id={process_id}, "
            f"num_processes={num_processes}."
        )
    # Only consulted by the CPU client; harmless elsewhere. Must precede backend start.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return jax.process_count() > 1


def is_main_process() -> bool:
    """Whether this process writes logs, plots and other single-copy files."""
    return jax.process_index() == 0
