#!/usr/bin/env bash
# The GPU suite in one call on a fresh GPU machine, from the repository root:
#   bash benchmarks/gpu_suite.sh [benchmarks.gpu_suite options]
# The machine brings its own jax, torch and timm; archjax's other needs (grain, qwix,
# ml-collections, ...) travel as wheels in .whl/ (see docs/benchmarks.md for the
# `pip download` line) and are installed into /tmp/site, never over the machine's own.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
# jax and torch share the GPU in one process: jax takes 40%, torch allocates the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.4}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
exec python3 -m benchmarks.gpu_suite "$@"
