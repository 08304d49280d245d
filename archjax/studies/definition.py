"""What a study is: trial configs, a trial function, fixed settings and its analysis."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from archjax.studies.store import StudyError


@dataclasses.dataclass(frozen=True)
class Trial:
    """What a trial function gets besides its config.

    Attributes:
      number: Optuna's trial number (a retried config gets a new number).
      key: the config's stable hash; the same across retries.
      workdir: this config's own directory (``<study workdir>/trials/<key>``); a
        retried trial finds its checkpoints here and resumes.
      report: ``report(step, value)`` stores a point of the metric-vs-step curve.
    """

    number: int
    key: str
    workdir: str
    report: Callable[[int, float], None]


TrialFunction = Callable[[dict[str, Any], Trial], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Study:
    """A study: the engine expands ``configs``, runs ``trial`` on each, records metrics.

    Example:
      >>> Study(name="toy", configs=grid(x=[1, 2]), trial=lambda c, t: {"loss": c["x"]})
    """

    # Name in the store; a store holds many studies.
    name: str
    # Trial configs (dicts of JSON values); their order is the queue's order.
    configs: Sequence[Mapping[str, Any]]
    # config (fixed settings + the trial's config) -> metrics (names -> numbers).
    trial: TrialFunction
    # Settings every trial shares; part of the study's identity in the store.
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The metric Optuna stores as the trial's value (shown by optuna-dashboard).
    objective: str = "loss"
    direction: str = "minimize"
    # Raises for a config the trial function cannot run (e.g. an unknown key).
    check: Callable[[dict[str, Any]], None] | None = None
    # Called once per worker process before its first claim (e.g. jax.distributed).
    setup: Callable[[], None] | None = None
    # rows -> results (JSON-able), for `python -m archjax.studies fit`.
    fit: Callable[[list[dict[str, Any]]], Any] | None = None
    # (rows, curves, output directory) -> written files, for `... plot`.
    plot: Callable[[list[dict[str, Any]], dict, str], list[str]] | None = None

    def __post_init__(self):
        if self.direction not in ("minimize", "maximize"):
            raise StudyError(
                f"Study {self.name!r}: direction must be 'minimize' or 'maximize', "
                f"got {self.direction!r}."
            )

    def full_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config a trial function receives: fixed settings, then the trial's."""
        return {**self.fixed, **config}

    def identity(self) -> dict[str, Any]:
        """What must match when a stored study is reopened."""
        # The module's last name only: a script imported by path or as a package
        # module (run from another directory) keeps its identity.
        module = self.trial.__module__.rsplit(".", 1)[-1]
        return {
            "trial_function": f"{module}.{self.trial.__qualname__}",
            "fixed": canonical(self.fixed),
            "objective": f"{self.direction} {self.objective}",
        }


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """All combinations of the given values, the last axis varying fastest.

    Example:
      >>> grid(width=[1, 2], seed=[0, 1])
      [{'width': 1, 'seed': 0}, {'width': 1, 'seed': 1}, {'width': 2, 'seed': 0}, ...]
    """
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def canonical(config: Mapping[str, Any]) -> str:
    """The config as canonical JSON (sorted keys); refuses values JSON cannot hold."""

    def check(value, where):
        if isinstance(value, float) and not math.isfinite(value):
            raise StudyError(f"Config value {where} = {value} is not finite.")
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise StudyError(f"Config key {k!r} in {where} must be a string.")
                check(v, f"{where}.{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
        elif not isinstance(value, str | int | float | bool | type(None)):
            raise StudyError(
                f"Config value {where} = {value!r} is a {type(value).__name__}; "
                "configs hold JSON values (str, int, float, bool, None, lists, dicts)."
            )

    for k, v in config.items():
        check(v, k)
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def config_key(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of a trial config (independent of key order)."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def load(spec: str, *, quick: bool = False) -> Study:
    """The study named by ``spec``: ``package.module[:function]`` or ``path.py[:function]``.

    The function (default ``define``) is called as ``function(quick=quick)`` and
    returns a :class:`Study`. A file inside the current directory is imported under
    its dotted module name, so both spellings define the same trial function.
    """
    target, _, attr = spec.partition(":")
    attr = attr or "define"
    module = None
    if target.endswith(".py"):
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise StudyError(f"Unknown study {spec!r}: no file {target}.")
        rel = os.path.relpath(path, os.getcwd())
        if not rel.startswith(".."):
            target = rel[:-3].replace(os.sep, ".")
        else:
            name = os.path.splitext(os.path.basename(path))[0]
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
    if module is None:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name and target.startswith(e.name):
                raise StudyError(
                    f"Unknown study {spec!r}: no module {e.name!r} (give a module such as "
                    "experiments.studies.toy_scaling or a file path ending in .py)."
                ) from None
            raise
    define = getattr(module, attr, None)
    if define is None:
        raise StudyError(f"Study {spec!r}: module {module.__name__} has no function {attr!r}.")
    study = define(quick=quick)
    if not isinstance(study, Study):
        raise StudyError(f"{spec}: {attr}() returned {type(study).__name__}, not a Study.")
    return study
