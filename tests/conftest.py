"""Test setup: 8 host CPU devices so that sharding is exercised without accelerators."""

import os

# Must happen before JAX initialises its backends (i.e. before any test imports jax).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
