"""Loading, checking and recording experiment configs.

Configs are ``ml_collections.ConfigDict`` files whose ``get_config(arg)`` starts
from ``experiments/configs/default.py``; every key they may hold is defined
there, so a misspelt key fails at once with the list of allowed keys. On the
command line ``config_flags.DEFINE_config_file`` loads them and applies
``--config.<key>=<value>`` overrides (:func:`define_config_flag`); a file's
``:arg`` holds only the arguments it declares (:func:`parse_arg`).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags

from archjax import data, models, optim
from archjax.train import get_policy, list_policies
from experiments import pruning

_HERE = os.path.dirname(__file__)
DEFAULT_CONFIG = os.path.join(_HERE, "configs", "default.py")

# Free-form sub-dicts: their keys are checked by the function they are passed to.
FREE_FORM = ("dataset_kwargs", "model_kwargs")
_POSITIVE_INTS = ("batch_size", "num_steps", "log_every", "eval_every", "eval_batch_size",
                  "checkpoint_every", "keep_checkpoints", "image_size")  # fmt: skip
_NON_NEGATIVE = ("sam_rho", "mixup_alpha", "cutmix_alpha", "agc_clipping", "ema_decay",
                 "momentum", "weight_decay", "warmup_steps", "random_crop_pad",
                 "keep_best_checkpoints", "skip_nonfinite_updates")  # fmt: skip


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


def check_keys(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, where: str = "config"
) -> None:
    """Raises ``ValueError`` naming the first key that ``config`` and ``reference`` do not share.

    Sub-dicts are compared recursively, except the free-form ``model_kwargs`` and
    ``dataset_kwargs`` (checked by ``models.create`` and ``data.get_dataset``).
    """
    for key in config:
        if key not in reference:
            raise ValueError(
                f"Unknown config key {key!r} (under {where}).{_allowed(list(reference), key)}"
            )
    for key in reference:
        if key not in config:
            raise ValueError(
                f"Config is missing key {key!r} (under {where}; start from configs/default.py)."
            )
        sub, ref = config[key], reference[key]
        if key not in FREE_FORM and isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(sub, ml_collections.ConfigDict):
                raise ValueError(f"config key {where}.{key} must be a dict, got {sub!r}.")
            check_keys(sub, ref, f"{where}.{key}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the first unknown key or impossible value."""
    check_keys(config, load_config(DEFAULT_CONFIG))
    if not isinstance(config.dataset, str) or not (
        config.dataset in data.list_datasets() or config.dataset.startswith("tfds:")
    ):
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
    if not 0 < config.learning_rate < math.inf:  # also refuses nan
        raise ValueError(
            f"config.learning_rate must be > 0 and finite, got {config.learning_rate}."
        )
    _check_model(config)
    _check_data(config)
    pruning.check_config(config)


def _check_model(config: ml_collections.ConfigDict) -> None:
    """``models.create`` names an unknown model (with the nearest names) or knob."""
    try:
        models.create(config.model, **model_kwargs(config))
    except ValueError as e:
        key = "model" if config.model not in models.list_models() else "model_kwargs"
        raise ValueError(f"config.{key}: {e}") from None


def _check_data(config: ml_collections.ConfigDict) -> None:
    """The dataset's options, and for TFDS its files, as ``data.check_dataset`` sees them."""
    for split in ("train", "test"):
        try:
            data.check_dataset(
                config.dataset,
                split,
                image_size=config.image_size,
                data_dir=config.data_dir,
                **config.dataset_kwargs.to_dict(),
            )
        except TypeError as e:
            raise ValueError(f"config.dataset_kwargs: {e}") from None
        except ValueError as e:
            raise ValueError(f"config.dataset / config.data_dir: {e}") from None


def model_kwargs(
    config: ml_collections.ConfigDict, num_classes: int | None = None
) -> dict[str, object]:
    """Knobs for ``models.create``: ``model_kwargs`` plus precision and regularization rates.

    Args:
      config: the experiment config.
      num_classes: the dataset's number of classes (None: the model's default).
    """
    kw = {} if num_classes is None else {"num_classes": num_classes}
    kw.update(config.model_kwargs.to_dict())
    if config.precision != "fp32":
        kw["dtype"] = get_policy(config.precision).compute_dtype
    for key in ("drop_path_rate", "dropout_rate"):
        if config[key] is not None:
            kw[key] = config[key]
    return kw


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


def parse_arg(arg: str | None, **declared: object) -> ml_collections.ConfigDict:
    """The ``key=value,...`` argument of ``get_config(arg)``, big_vision style.

    A config file declares the arguments it takes, with their defaults; each value
    is converted to its default's type. Config *keys* are overridden with
    ``--config.<key>=<value>`` instead; an argument is for a choice that sets
    several keys at once (a quantization scheme, a model family).

    Args:
      arg: the text after the colon in ``--config=path.py:arg`` (None or "" for none).
      **declared: argument name -> default value (bool, int, float or str).

    Returns:
      A ConfigDict with every declared argument.

    Raises:
      ValueError: an undeclared argument, or a value of the wrong type.

    Example:
      >>> parse_arg("scheme=w4a4", scheme="w8a8", calibration_batches=8)
      calibration_batches: 8
      scheme: w4a4
    """
    values = ml_collections.ConfigDict(declared)
    for item in filter(None, (arg or "").split(",")):
        key, sep, text = item.partition("=")
        if not sep or key not in declared:
            names = ", ".join(sorted(declared)) or "none"
            raise ValueError(
                f"Bad config argument {item!r}: the config file's declared arguments are "
                f"{names} (key=value); set config keys with --config.<key>=<value>."
            )
        kind = type(declared[key])
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                values[key] = text.lower() in ("true", "1")
            else:
                values[key] = kind(text)
        except ValueError:
            raise ValueError(
                f"Bad config argument {item!r}: {key} takes a {kind.__name__}."
            ) from None
    return values


def define_config_flag(
    default: str | ml_collections.ConfigDict, help_string: str = "Config file, 'path.py[:arg]'."
):
    """``--config=path.py[:arg]`` with ``--config.<key>=<value>`` overrides, via config_flags.

    The config is loaded unlocked and accepts new attributes, so that
    ``--config.model_kwargs.<knob>=`` can add a knob to a free-form sub-dict;
    :func:`checked_config` then refuses any key the config file does not define
    outside those sub-dicts. Use with ``app.run(main, flags_parser=parse_flags)``.

    Args:
      default: the config file used without ``--config``, or a ConfigDict for a
        script whose only config is built in code (``config_flags.DEFINE_config_dict``).
      help_string: the flag's help.
    """
    options = dict(lock_config=False, accept_new_attributes=True)
    define = (
        config_flags.DEFINE_config_dict
        if isinstance(default, ml_collections.ConfigDict)
        else config_flags.DEFINE_config_file
    )
    try:  # without --config on the command line, the default is parsed right here
        return define("config", default, help_string, **options)
    except (KeyError, ValueError, TypeError, OSError) as e:
        _exit_usage(e)


def parse_flags(argv: list[str]) -> list[str]:
    """``app.run``'s flags parser: a bad flag is one ``FATAL`` line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, ValueError, TypeError, OSError) as e:
        _exit_usage(e)


def checked_config(
    flag,
    *checks: Callable[[ml_collections.ConfigDict], None],
    reference: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
    """The parsed ``--config``, checked, then locked; exit status 2 with one line if bad.

    Checks that every key is one the config itself defines (new keys are allowed
    only in the free-form ``model_kwargs`` / ``dataset_kwargs``), then runs
    ``checks`` (e.g. :func:`validate`).

    Args:
      flag: from :func:`define_config_flag`.
      *checks: functions that raise ``ValueError`` naming a bad value.
      reference: the config without overrides (default: the ``--config`` file, reloaded).
    """
    try:
        config = flag.value
        if reference is None:
            reference = load_config(flags.FLAGS[flag.name].config_filename)
        check_keys(config, reference)
        for check in checks:
            check(config)
    except (ValueError, OSError) as e:
        _exit_usage(e)
    config.lock()
    return config


def _exit_usage(error: BaseException) -> NoReturn:
    """Prints the error that names the problem on one line, as absl does, and exits 2."""
    # ml_collections re-raises get_config's error with a traceback as its message and
    # absl wraps that again: go down the chain to the error that was raised first.
    while "\n" in str(error).strip() and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    if isinstance(error, KeyError):  # config_flags could not find a --config.a.b parent
        text = f"Unknown config key {error.args[0] if error.args else ''} in a --config.* flag."
    else:
        text = str(error).strip().splitlines()[-1]
    print(f"FATAL Flags parsing error: {text}", file=sys.stderr)
    sys.exit(2)


def _recipe_choices() -> dict[str, list]:
    """Config keys that name a recipe piece, and the names each accepts."""
    return {
        "schedule": optim.list_schedules(),
        "lr_scaling": list(optim.LR_RULES),
        "optimizer_state_bits": list(optim.STATE_BITS),
        "precision": list_policies(),
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
    for key in _NON_NEGATIVE:
        if not config[key] >= 0:  # also refuses nan
            raise ValueError(f"config.{key} must be >= 0 (0 = off), got {config[key]}.")
    for key in ("ema_decay", "label_smoothing", "drop_path_rate", "dropout_rate"):
        if config[key] is not None and not 0 <= config[key] < 1:
            raise ValueError(f"config.{key} must be < 1 (and >= 0), got {config[key]}.")
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
