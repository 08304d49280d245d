"""The one path-regex matcher behind quantization rules, sharding rules and optimizer masks.

A pytree leaf's path is written ``jax.tree_util.keystr(path, simple=True,
separator="/")`` (``params/stage1/block0/conv1/kernel``); a Flax layer's path is
the same without the leaf name. Every archjax rule that selects leaves or layers
(:class:`archjax.quant.QuantRule`, :class:`archjax.parallel.ShardingRules`,
:func:`archjax.optim.path_mask`, the Hessian tools' ``subset``) names a regular
expression that is *searched* in that string (``re.search``, not ``fullmatch``),
and the first matching rule wins. This module is that rule, in one place, so the
three tables read and fail the same way.

It imports nothing from archjax, so any subpackage may use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TypeVar

Rule = TypeVar("Rule")


def check_pattern(pattern: str, *, field: str) -> None:
    """Raises a ``ValueError`` naming ``field`` unless ``pattern`` is a valid regex.

    Example:
      >>> check_pattern("(", field="QuantRule.pattern")
      ValueError: QuantRule.pattern: bad regex '(': missing ), unterminated subpattern ...
    """
    if not isinstance(pattern, str):
        raise ValueError(f"{field}: a path regex must be a string, got {pattern!r}.")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{field}: bad regex {pattern!r}: {e}.") from None


def match_path(pattern: str, path: str) -> bool:
    """True if ``pattern`` is found anywhere in the "/"-joined ``path`` (``re.search``).

    Example:
      >>> match_path(r"^head/", "head/kernel"), match_path(r"kernel$", "head/bias")
      (True, False)
    """
    return re.search(pattern, path) is not None


def first_match(rules: Iterable[Rule], path: str, *, pattern: Callable[[Rule], str]) -> Rule | None:
    """The first of ``rules`` whose ``pattern(rule)`` matches ``path`` (None if none does).

    Example:
      >>> first_match([("^a/", 1), ("", 2)], "b/c", pattern=lambda r: r[0])
      ('', 2)
    """
    for rule in rules:
        if match_path(pattern(rule), path):
            return rule
    return None
