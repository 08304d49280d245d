"""Name -> constructor registry for archjax models.

Every family registers its named variants here, so that an experiment config, a
scaling study or a test can build any model from a string:

    model = archjax.models.create("resnet20", num_classes=10)
    variables = model.init(jax.random.key(0), x, train=False)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TINY: dict[str, dict[str, Any]] = {}
_DEFAULT_TINY = {"width_multiplier": 1 / 16}


def register(
    name: str, *, tiny: dict[str, Any] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model constructor under ``name``.

    Args:
      name: registry key, lower case (e.g. ``"resnet50"``); where timm has the
        same network, use timm's name.
      tiny: knobs that make a very small member of the same family, used by the
        registry-wide tests and smoke runs (default: ``width_multiplier=1/16``).

    Returns:
      A decorator returning the constructor unchanged.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is already registered.")
        _REGISTRY[name] = fn
        _TINY[name] = dict(_DEFAULT_TINY if tiny is None else tiny)
        return fn

    return wrap


def tiny_kwargs(name: str) -> dict[str, Any]:
    """Knobs that shrink model ``name`` for fast tests: ``create(name, **tiny_kwargs(name))``."""
    _check_name(name)
    return dict(_TINY[name])


def list_models() -> list[str]:
    """Returns the sorted names of all registered models."""
    return sorted(_REGISTRY)


def _knobs(module_cls: type) -> list[str]:
    """Names of the dataclass fields a user may set on a Flax module."""
    return [
        f.name
        for f in dataclasses.fields(module_cls)
        if f.init and f.name not in ("parent", "name")
    ]


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}."
        )


def create(name: str, **kwargs) -> nn.Module:
    """Builds a registered model.

    Args:
      name: a name from :func:`list_models`, e.g. ``"resnet20"`` or ``"resnet50"``.
      **kwargs: knobs that override the variant's defaults, e.g. ``num_classes=10``,
        ``width_multiplier=0.5``, ``dtype=jnp.bfloat16``.

    Returns:
      An (unbound) Flax Linen module; use it through ``init``/``apply``.

    Raises:
      ValueError: the name is not registered (the message lists the registered names)
        or a knob is not a field of the model (the message lists the allowed knobs).

    Example:
      >>> model = create("resnet20", num_classes=10)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)
    """
    _check_name(name)
    ctor = _REGISTRY[name]
    try:
        return ctor(**kwargs)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        probe = ctor()
        allowed = _knobs(type(probe))
        bad = sorted(set(kwargs) - set(allowed))
        raise ValueError(
            f"Model {name!r} got unknown option(s) {bad}. Allowed options: {', '.join(allowed)}."
        ) from None
