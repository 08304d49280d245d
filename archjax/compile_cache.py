"""JAX's persistent compilation cache: compile a program once per machine, not per process.

The main job (`experiments/train.py`) and the study engine turn it on before their first
compilation, so a re-run, a resumed run, each study trial and each test subprocess load the
programs that an earlier process compiled instead of compiling them again. JAX keys every
entry on the program itself (its HLO), the compile options, the devices and the jax/jaxlib
versions, so a changed model or shape compiles anew and never meets a stale entry.

The directory holds executables that JAX loads and runs: keep it private to the user (it is
created with mode 0o700), and delete it to reclaim the space; JAX does not bound its size.
"""

from __future__ import annotations

import os

import jax

# Programs that compile faster than this are not written: below it, a disk read saves
# nothing worth a file. JAX's default (1 s) would skip most of the CPU test programs.
MIN_COMPILE_TIME_SECS = 0.1


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/archjax/jax_cache``, or ``~/.cache/archjax/jax_cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "archjax", "jax_cache")


def enable_compilation_cache(
    directory: str | None = None, *, min_compile_time_secs: float = MIN_COMPILE_TIME_SECS
) -> str | None:
    """Turns JAX's persistent compilation cache on (or off) for this process.

    Call it before the process compiles anything: JAX decides at the first compilation
    whether the process uses the cache, and a later call has no effect on that process.

    Args:
      directory: where compiled programs are stored. ``None`` means the directory JAX is
        already configured with (``JAX_COMPILATION_CACHE_DIR``), else
        :func:`default_cache_dir`; ``""`` turns the cache off.
      min_compile_time_secs: programs that compile faster are not stored.

    Returns:
      The directory in use, or ``None`` when the cache is off.

    Example:
      >>> enable_compilation_cache()  # before the first jit call
      '/home/me/.cache/archjax/jax_cache'
    """
    if directory is not None and not isinstance(directory, str):
        raise ValueError(
            f"compilation cache directory must be a path, '' (off) or None (default), "
            f"got {directory!r}."
        )
    if directory == "":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    directory = directory or jax.config.jax_compilation_cache_dir or default_cache_dir()
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    return directory
