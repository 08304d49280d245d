"""Loading, checking and recording experiment configs.

Configs are ``ml_collections.ConfigDict`` files whose ``get_config(arg)`` starts
from ``experiments/configs/default.py``; every key they may hold is defined
there, so a misspelt key fails at once with the list of allowed keys.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence

import ml_collections

from archjax import data, models, optim
from archjax import train as T

_HERE = os.path.dirname(__file__)
DEFAULT_CONFIG = os.path.join(_HERE, "configs", "default.py")

# Free-form sub-dicts: their keys are checked by the function they are passed to.
_FREE_FORM = ("dataset_kwargs", "model_kwargs")
_POSITIVE_INTS = ("batch_size", "num_steps", "log_every", "eval_every", "eval_batch_size",
                  "checkpoint_every", "keep_checkpoints", "image_size")  # fmt: skip


def load_config(spec: str = DEFAULT_CONFIG) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location("_archjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _allowed(keys: Sequence[str], bad: str) -> str:
    close = difflib.get_close_matches(bad, keys, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Allowed keys: {', '.join(sorted(keys))}."


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the first unknown key or impossible value."""
    reference = load_config(DEFAULT_CONFIG)
    for key in config:
        if key not in reference:
            raise ValueError(f"Unknown config key {key!r}.{_allowed(list(reference), key)}")
    for key in reference:
        if key not in config:
            raise ValueError(f"Config is missing key {key!r} (start from configs/default.py).")
    if config.model not in models.list_models():
        raise ValueError(
            f"Unknown model {config.model!r} (config.model). "
            f"Registered models: {', '.join(models.list_models())}."
        )
    known = config.dataset in data.list_datasets() or config.dataset.startswith("tfds:")
    if not isinstance(config.dataset, str) or not known:
        raise ValueError(
            f"Unknown dataset {config.dataset!r} (config.dataset). "
            f"Choices: {', '.join(data.list_datasets())}."
        )
    if config.optimizer not in optim.list_optimizers():
        raise ValueError(
            f"Unknown optimizer {config.optimizer!r} (config.optimizer). "
            f"Choices: {', '.join(optim.list_optimizers())}."
        )
    _check_recipe(config)
    for key in _POSITIVE_INTS:
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")
    if config.learning_rate <= 0:
        raise ValueError(f"config.learning_rate must be > 0, got {config.learning_rate}.")


def _comparable(config: ml_collections.ConfigDict, ignore: Sequence[str]) -> dict:
    d = json.loads(config.to_json())
    return {k: v for k, v in d.items() if k not in ignore}


def check_or_write(
    config: ml_collections.ConfigDict, workdir: str, *, resumable_keys: Sequence[str]
) -> None:
    """Refuses to resume a workdir whose checkpoints came from a different config.

    Writes ``config.json`` on a fresh start. On resume, only ``resumable_keys`` may
    differ from the saved config (then ``config.json`` is updated); anything else
    raises ``ValueError`` listing the differences, and nothing is overwritten.
    """
    path = os.path.join(workdir, "config.json")
    has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
        name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints"))
    )
    if has_checkpoints and os.path.exists(path):
        with open(path) as f:
            saved = {k: v for k, v in json.load(f).items() if k not in resumable_keys}
        now = _comparable(config, resumable_keys)
        diff = [
            f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)
        ]
        if diff:
            raise ValueError(
                f"Workdir {workdir!r} holds checkpoints of a different config "
                f"({'; '.join(diff)}). Use a new --workdir, or restore the old values. "
                f"Only {', '.join(resumable_keys)} may change on resume."
            )
    with open(path, "w") as f:
        f.write(config.to_json(indent=2))


def truncate_metrics(path: str, *, after_step: int) -> None:
    """Drops metric records past ``after_step`` (steps that a resume will redo)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= after_step]
    if len(kept) != len(lines):
        with open(path, "w") as f:
            f.writelines(kept)


# ``--config.model_kwargs.width_multiplier=2.0`` adds a key to a free-form sub-dict,
# which config_flags cannot do; the parser takes these out and applies them after.
_FREE_FORM_OVERRIDES: list[tuple[str, str, object]] = []


def _parse_value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as resnet32


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies a config file's ``:arg`` string, "key=value,key=value" (Python literals)."""
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in config:
            raise ValueError(
                f"Bad config argument {item!r}: expected key=value." + _allowed(list(config), key)
            )
        config[key] = _parse_value(value)
    return config


def _split_overrides(argv: Sequence[str]) -> list[str]:
    """Checks ``--config.a.b=v`` keys; returns argv without free-form overrides."""
    spec = DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    config = load_config(spec)
    kept = []
    for arg in argv:
        if not arg.startswith("--config."):
            kept.append(arg)
            continue
        key, _, value = arg[len("--config.") :].partition("=")
        parts = key.split(".")
        if parts[0] in _FREE_FORM and len(parts) == 2:
            _FREE_FORM_OVERRIDES.append((parts[0], parts[1], _parse_value(value)))
            continue
        node = config
        for depth, part in enumerate(parts):
            keys = list(node) if isinstance(node, ml_collections.ConfigDict) else []
            if part not in keys:
                where = ".".join(["config", *parts[:depth]])
                raise ValueError(
                    f"Unknown config key {part!r} in {arg} (under {where}).{_allowed(keys, part)}"
                )
            node = node[part]
        kept.append(arg)
    return kept


def apply_free_form_overrides(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Applies the ``--config.<dataset|model>_kwargs.KEY=VALUE`` flags taken out by the parser."""
    with config.unlocked():
        for group, key, value in _FREE_FORM_OVERRIDES:
            config[group][key] = value
    return config


def preprocess_argv(argv: list[str]) -> None:
    """Checks ``--config.*`` flags and takes out free-form ones, editing ``argv`` in place.

    Call before ``config_flags.DEFINE_config_file``, which applies the overrides in
    ``sys.argv`` as soon as it is defined. Exits with status 2 and a message naming
    the key (and the allowed keys) if a ``--config.*`` flag names an unknown key.
    """
    try:
        argv[1:] = _split_overrides(argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
        sys.exit(2)


def _recipe_choices() -> dict[str, list]:
    """Config keys that name a recipe piece, and the names each accepts."""
    return {
        "schedule": optim.list_schedules(),
        "lr_scaling": list(optim.LR_RULES),
        "optimizer_state_bits": list(optim.STATE_BITS),
        "precision": T.list_policies(),
    }


def _check_recipe(config: ml_collections.ConfigDict) -> None:
    """Unknown names of recipe pieces and impossible recipe values raise ``ValueError``."""
    for key, choices in _recipe_choices().items():
        if config[key] not in choices:
            raise ValueError(
                f"Unknown {key} {config[key]!r} (config.{key}). "
                f"Choices: {', '.join(map(str, choices))}."
            )
    for key in ("microbatches", "sam_groups", "base_batch_size"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")
    for key in ("sam_rho", "mixup_alpha", "cutmix_alpha", "agc_clipping", "ema_decay"):
        if config[key] < 0:
            raise ValueError(f"config.{key} must be >= 0 (0 = off), got {config[key]}.")
    if config.ema_decay >= 1:
        raise ValueError(f"config.ema_decay must be < 1, got {config.ema_decay}.")
    if not 0 <= config.randaugment_magnitude <= 30 or config.randaugment_layers < 0:
        raise ValueError(
            "config.randaugment_layers must be >= 0 and config.randaugment_magnitude in "
            f"[0, 30], got {config.randaugment_layers} and {config.randaugment_magnitude}."
        )
    for key in ("microbatches", "sam_groups"):
        if config.batch_size % config[key]:
            raise ValueError(
                f"config.{key}={config[key]} must divide config.batch_size={config.batch_size}."
            )
