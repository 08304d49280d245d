"""Quantization rules: *which* layers (a module-path regex) separate from *how*.

A rule names a regular expression that is searched (``re.search``, through
:mod:`archjax.tree_paths`, as sharding rules and optimizer masks are) in each
layer's "/"-joined Flax module path (``"stage1/block0/conv1"``, ``"head"``), and
the formats, granularities and calibration used for that layer's weights and
input activations. The first matching rule wins, so specific rules go first:

    rules = first_last_rules(first_last=IntFormat(bits=8), rest=IntFormat(bits=4))

is the usual "first and last layer 8-bit, the rest 4-bit" policy of
Pareto-optimal 4-bit ResNets (Abdolrashidi et al., 2021) and HAWQ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from archjax.quant.calibration import CALIBRATION_METHODS as _CALIBRATIONS
from archjax.quant.formats import Format, PerChannel, PerTensor
from archjax.quant.numerics import STE_VARIANTS as _STES
from archjax.tree_paths import check_pattern, first_match


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantRule:
    """How to quantize the layers whose module path matches ``pattern``.

    Example:
      >>> QuantRule(pattern=r"stage\\d", weight=IntFormat(bits=4), activation=IntFormat(bits=8))
    """

    # Regular expression searched (not fully matched) in the "/"-joined module path.
    pattern: str
    # Format of the layer's weights (kernel); None keeps them in float.
    weight: Format | None = None
    # Format of the layer's input activations; None keeps them in float.
    activation: Format | None = None
    # Granularity of weight scales; None = the format's own (`Format.weight_granularity`:
    # one scale per output channel for int/float formats, the blocks of NF4 and MX).
    weight_granularity: object = None
    # Granularity of activation scales; the default is one scale for the tensor.
    activation_granularity: object = dataclasses.field(default_factory=PerTensor)
    # How weight scales are computed: "absmax", "percentile" or "mse".
    weight_calibration: str = "absmax"
    # How activation scales are calibrated (running statistic in `quant_stats`).
    activation_calibration: str = "absmax"
    # Straight-through estimator of the rounding: "identity", "clipped" or "reste".
    ste: str = "identity"
    # Learn the scales as parameters (LSQ for weights, PACT clip for activations).
    learned_scale: bool = False

    def __post_init__(self):
        check_pattern(self.pattern, field="QuantRule.pattern")
        if self.weight_granularity is None:  # resolved once, so rules compare by value
            default = PerChannel(-1) if self.weight is None else self.weight.weight_granularity
            object.__setattr__(self, "weight_granularity", default)
        for field in ("weight_calibration", "activation_calibration"):
            value = getattr(self, field)
            if value not in _CALIBRATIONS:
                raise ValueError(
                    f"QuantRule.{field}={value!r}; allowed: {', '.join(_CALIBRATIONS)}."
                )
        if self.ste not in _STES:
            raise ValueError(f"QuantRule.ste={self.ste!r}; allowed: {', '.join(_STES)}.")


def match_rule(rules: Sequence[QuantRule], path: str) -> QuantRule | None:
    """Returns the first rule whose pattern is found in ``path`` (None if none is).

    Args:
      rules: rules in priority order.
      path: a "/"-joined Flax module path, e.g. ``"stage1/block0/conv1"``.

    Returns:
      The first matching rule, or None (the layer stays in float).

    Example:
      >>> match_rule([QuantRule(pattern="head", weight=IntFormat(bits=8))], "head").pattern
      'head'
    """
    return first_match(rules, path, pattern=lambda rule: rule.pattern)


def first_last_rules(
    first_last: Format,
    rest: Format,
    *,
    activation: Format | None = None,
    first: str = r"^(stem|patch_embed)[^/]*$",
    last: str = r"^head(/|$)",
    **how,
) -> list[QuantRule]:
    """The "first and last layer at ``first_last``, the rest at ``rest``" policy, one line.

    Keeping the stem and the classifier at 8 bits while the body uses 4 bits is the
    standard setting of Pareto-optimal 4-bit ResNets (Abdolrashidi et al., 2021) and
    HAWQ (Dong et al., 2019).

    Args:
      first_last: weight format of the first and last layers.
      rest: weight format of every other layer.
      activation: activation format of every layer (None: float activations; the first
        and last layers use ``first_last`` when ``activation`` is given).
      first: regex of the first layer's path; the default matches archjax's stems
        (``stem``, ``stem_conv``, the deep stems' ``stem_conv1..3``, ``patch_embed``);
        VGG's first layer is ``"^stage1_conv1$"``.
      last: regex of the last layer's path (archjax classifiers are named ``head``).
      **how: other :class:`QuantRule` fields shared by all rules (granularity, ste...).

    Returns:
      A list of three rules: first, last, then ``".*"``.

    Example:
      >>> int8, int4 = IntFormat(bits=8), IntFormat(bits=4)
      >>> rules = first_last_rules(int8, int4, activation=int8)
    """
    edge_act = None if activation is None else first_last
    return [
        QuantRule(pattern=first, weight=first_last, activation=edge_act, **how),
        QuantRule(pattern=last, weight=first_last, activation=edge_act, **how),
        QuantRule(pattern=".*", weight=rest, activation=activation, **how),
    ]
