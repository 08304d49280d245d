"""Test setup: 8 host CPU devices so that sharding is exercised without accelerators."""

import os

# Must happen before JAX initialises its backends (i.e. before any test imports jax).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU sizes its thread pool as max(cores, devices); with 8 simulated devices on
# 2 cores, an all-reduce can wait forever for a thread that never frees up when
# steps are dispatched asynchronously. Spare threads avoid it (seen here: 3 of 3
# 900-step runs hung without this, 0 of 4 with it). Notebook kernels and
# subprocesses inherit it.
os.environ.setdefault("PJRT_NPROC", "16")
