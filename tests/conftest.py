"""Test setup: 8 host CPU devices so that sharding is exercised without accelerators."""

import os

# Must happen before JAX initialises its backends (i.e. before any test imports jax).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' programs are tiny and compile far longer than they run, so XLA:CPU compiles
# them fast rather than well: LLVM at optimisation level 0 and the classic elemental
# emitters instead of the fusion emitters. Measured here on 2 cores: LLVM -O0 took
# tests/studies/test_sam.py with tests/train/test_step.py from 56 s to 30 s (the whole
# suite from 22 to 17 min); the classic emitters then took those two files with
# tests/parallel/test_strategies.py from 276 s to 149 s. The whole suite, bitwise
# comparisons included, passes either way. A test that trains for long (the main job's
# accuracy run) drops them: at 300 steps the defaults are faster.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
for _flag in TEST_XLA_FLAGS:
    if _flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += f" {_flag}"
# XLA:CPU sizes its thread pool as max(cores, devices); with 8 simulated devices on
# 2 cores, an all-reduce can wait forever for a thread that never frees up when
# steps are dispatched asynchronously. Spare threads avoid it (seen here: 3 of 3
# 900-step runs hung without this, 0 of 4 with it). Notebook kernels and
# subprocesses inherit it.
os.environ.setdefault("PJRT_NPROC", "16")
# One persistent compilation cache for this test session, shared by the pytest process,
# every subprocess (main-job runs, study workers, multi-process runs) and notebook
# kernels: the same tiny programs compile once instead of in each process and each test
# that rebuilds a jitted function. A fresh directory per session, so a run never reads
# programs cached by an earlier checkout; JAX keys entries on the program anyway.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="archjax-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # JAX stores only programs that took >= 1 s to compile by default; most here are faster.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

# The tiny but real main-job run that tests of experiments/ start from: digits at
# 8 px, a quarter-width ResNet-8, one device. Tests override what they need, e.g.
# ``{**TINY_RUN, "num_steps": 4}``; ``TINY_MODEL_KWARGS`` go to ``config.model_kwargs``.
TINY_RUN = dict(
    model="resnet8",
    image_size=8,
    batch_size=32,
    eval_batch_size=64,
    num_steps=12,
    log_every=3,
    eval_every=6,
    checkpoint_every=4,
    warmup_steps=2,
    num_devices=1,
)
TINY_MODEL_KWARGS = dict(width_multiplier=0.25)

# Scheduling. The suite runs on 2 workers, a test file's tests on one (`--dist loadfile`),
# each worker taking the next file when it is free. Its wall time is at least that of the
# worker that starts the last heavy file, so the heaviest files start first (longest
# processing time first); the rest follow in collection order. pytest-xdist would
# otherwise order files by their number of tests (`--no-loadscope-reorder` in
# pyproject.toml turns that off), which put these one-test files last.
# Seconds: one file's tests, measured on this project's 2-core machine on 2 workers.
HEAVIEST_FIRST = {
    "tests/experiments/test_main_job.py": 106,
    "tests/notebooks/test_notebooks.py": 97,
    "tests/parallel/test_multiprocess_preemption.py": 63,
    "tests/quant/test_transform_registry.py": 60,
    "tests/experiments/test_train.py": 55,
    "tests/models/test_all_models.py": 45,
    "tests/parallel/test_strategies.py": 44,
    "tests/sparsity/test_registry.py": 42,
    "tests/nas/test_supernet.py": 45,
    "tests/studies/test_fp8.py": 35,
    "tests/studies/test_bignas.py": 34,
    "tests/nas/test_vit_supernet.py": 30,
    "tests/parallel/test_mesh_property.py": 28,
}


def pytest_collection_modifyitems(config, items):
    import pathlib

    import pytest

    root = pathlib.Path(__file__).resolve().parent.parent
    missing = [p for p in HEAVIEST_FIRST if not (root / p).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py HEAVIEST_FIRST names missing files {missing}")
    rank = {
        root / p: i
        for i, (p, _) in enumerate(sorted(HEAVIEST_FIRST.items(), key=lambda kv: -kv[1]))
    }
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: the rest as collected
