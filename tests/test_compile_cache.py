"""Tests for archjax/compile_cache.py: fresh processes share compiled programs, and a changed
model never loads a stale one."""

import json
import os
import subprocess
import sys

import pytest

from archjax import compile_cache, studies
from archjax.studies import runner

# Enables the cache, compiles a tiny ResNet's init and forward pass, and prints how many of
# the lookups hit the cache. The width multiplier is the model knob that the test changes.
_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from archjax import compile_cache, models

events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
used = compile_cache.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0)
model = models.create("resnet8", num_classes=10, width_multiplier=float(sys.argv[2]))
x = jnp.zeros((2, 8, 8, 1))
variables = jax.jit(model.init)(jax.random.key(0), x)
jax.block_until_ready(jax.jit(model.apply)(variables, x))
print(json.dumps({
    "dir": used,
    "lookups": events.count("/jax/compilation_cache/compile_requests_use_cache"),
    "hits": events.count("/jax/compilation_cache/cache_hits"),
}))
"""


def _compile_in_fresh_process(cache_dir: str, width: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, cache_dir, str(width)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(cache_dir) -> set[str]:
    return {name for name in os.listdir(cache_dir) if name.endswith("-cache")}


def test_second_process_hits_and_a_changed_model_compiles_anew(tmp_path):
    cache_dir = str(tmp_path / "jax_cache")
    first = _compile_in_fresh_process(cache_dir, 0.25)
    assert first["dir"] == cache_dir
    assert first["lookups"] >= 2 and first["hits"] == 0
    written = _entries(cache_dir)
    assert len(written) == first["lookups"]  # every miss is written

    again = _compile_in_fresh_process(cache_dir, 0.25)
    assert again["lookups"] == first["lookups"] and again["hits"] == again["lookups"]
    assert _entries(cache_dir) == written

    # Wider layers: the model's init and forward pass miss and compile anew (only programs
    # that do not involve the model, such as making the PRNG key, may still hit).
    wider = _compile_in_fresh_process(cache_dir, 0.5)
    misses = wider["lookups"] - wider["hits"]
    assert misses >= 2
    assert len(_entries(cache_dir) - written) == misses


def test_empty_directory_turns_the_cache_off(tmp_path):
    off = _compile_in_fresh_process("", 0.25)
    assert off["dir"] is None and off["lookups"] == 0


def test_default_directory_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_cache_dir() == str(tmp_path / "archjax" / "jax_cache")


def test_bad_directory_names_the_problem():
    with pytest.raises(ValueError, match="compilation cache directory must be a path"):
        compile_cache.enable_compilation_cache(3)


# A study whose trial reports how JAX's cache is configured in the worker that runs it.
_STUDY = """
from archjax import studies


def report_cache(config, trial):
    import jax

    return {"enabled": float(jax.config.jax_enable_compilation_cache),
            "dir": jax.config.jax_compilation_cache_dir or ""}


def define(quick=False):
    return studies.Study(name="cache_probe", configs=[{"i": 0}], trial=report_cache,
                         objective="enabled")
"""


def test_study_workers_use_the_cache_unless_turned_off(tmp_path):
    """On in spawned workers (``--workers 2``), off in the in-process worker (``''``)."""
    spec = tmp_path / "probe.py"
    spec.write_text(_STUDY)
    study = studies.load(str(spec))
    seen = {}
    for name, workers, flag in (("on", 2, str(tmp_path / "cache")), ("off", 1, "")):
        workdir = str(tmp_path / name)
        cmd = [sys.executable, "-m", "archjax.studies", "run", str(spec), "--workdir", workdir,
               "--workers", str(workers), "--compilation-cache-dir", flag]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        storage = studies.open_storage(studies.sqlite_url(workdir))
        (seen[name],) = studies.rows(runner.load(study, storage))
    assert seen["on"]["enabled"] == 1.0 and seen["on"]["dir"] == str(tmp_path / "cache")
    assert seen["off"]["enabled"] == 0.0
