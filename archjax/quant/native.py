"""Native low-precision execution of int8 / fp8 rules through qwix.

``native(model, rules)`` turns archjax rules into qwix PTQ rules and wraps the float
model with ``qwix.quantize_model`` (qwix's ``PtqProvider``), so convolutions and
matmuls run on int8 / fp8 operands (int32 / float accumulation) where the backend
has such kernels, instead of being emulated in float32 as :func:`quantize` does. It
takes the same float variables as the model (qwix quantizes the weights on the fly)
and uses dynamic activation scales; :func:`native_variables` stores the weights as
qwix ``QArray`` s (int8 / fp8 codes plus scales) once, before ``apply``.

qwix decides the scale granularity itself: weights per output channel; activations
per example for convolutions and per row (every non-contracted axis) for matmuls.
The matching fake-quant rule (for comparisons) is therefore ``weight_granularity=
PerChannel(-1)`` and, for 2-D dense inputs and convolutions, ``activation_granularity=
PerChannel(0)``. qwix maps an int8 absmax to 127.5 (``qmax + 0.5``) where archjax
maps it to 127, so int8 outputs differ by a fraction of a quantization step; fp8
outputs agree to float rounding. Only int8 (signed, symmetric) and fp8 (e4m3fn, e5m2) formats are
native; qwix's int4 convolution fails on XLA:CPU, so int4 is refused here. Kernels
must be parameters used as is (``nn.Conv``, ``nn.Dense``): weight-standardized
convolutions (NF-ResNets) compute their kernel and are not supported by qwix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix

from archjax.quant.formats import FloatFormat, IntFormat
from archjax.quant.rules import QuantRule
from archjax.quant.transform import is_quantized, quant_rules, unquantized

_NATIVE = {
    IntFormat(8): jnp.int8,
    FloatFormat(4, mantissa_bits=3, finite_only=True): jnp.float8_e4m3fn,
    FloatFormat(5, mantissa_bits=2): jnp.float8_e5m2,
}


def native_dtype(fmt) -> jnp.dtype | None:
    """The native dtype of ``fmt`` (``None`` for None), or ValueError if it has none."""
    if fmt is None:
        return None
    if fmt not in _NATIVE:
        allowed = ", ".join(f.name for f in _NATIVE)
        raise ValueError(
            f"Format {fmt.name} has no native (qwix) execution; allowed: {allowed}. "
            "Use archjax.quant.quantize_model to emulate it."
        )
    return _NATIVE[fmt]


def native_rules(rules: Sequence[QuantRule]) -> list[qwix.QuantizationRule]:
    """archjax rules -> qwix rules (same regexes, made ``re.search``-like for qwix's fullmatch)."""
    out = []
    for rule in rules:
        if rule.learned_scale:
            raise ValueError(f"Rule {rule.pattern!r}: learned scales have no native path.")
        out.append(
            qwix.QuantizationRule(
                module_path=f".*(?:{rule.pattern}).*",
                weight_qtype=native_dtype(rule.weight),
                act_qtype=native_dtype(rule.activation),
                act_static_scale=False,
            )
        )
    return out


def native(model: nn.Module, rules: Sequence[QuantRule] | None = None) -> nn.Module:
    """Returns ``model`` running its int8 / fp8 layers natively through qwix.

    Args:
      model: a float Flax module, or a module from :func:`archjax.quant.quantize_model`
        (its rules are used when ``rules`` is None).
      rules: archjax rules whose formats are int8 / fp8 (first match wins, as in qwix).

    Returns:
      A module with the same ``init``/``apply`` signature; apply it to
      :func:`native_variables` (weights already in int8 / fp8).

    Raises:
      ValueError: a rule uses a format with no native execution (e.g. int4, binary).

    Example:
      >>> int8 = IntFormat(8)
      >>> nmodel = native(model, [QuantRule(pattern=".*", weight=int8, activation=int8)])
      >>> nvars = native_variables(nmodel, variables, x, train=False)
      >>> logits = nmodel.apply(nvars, x, train=False)
    """
    if rules is None:
        if not is_quantized(model):
            raise ValueError(
                "native(model) needs rules or a model from archjax.quant.quantize_model."
            )
        rules = quant_rules(model)
    provider = qwix.PtqProvider(native_rules(rules))
    return qwix.quantize_model(unquantized(model), provider)


def native_variables(
    native_model: nn.Module, variables: dict[str, Any], *args, **kwargs
) -> dict[str, Any]:
    """Float variables -> the native model's variables (weights as qwix int8 / fp8 QArrays).

    Args:
      native_model: a module from :func:`native`.
      variables: the float model's variables.
      *args: example inputs (only shapes are used), e.g. ``x``.
      **kwargs: model keyword arguments, e.g. ``train=False``.

    Returns:
      ``variables`` with ``params`` quantized by ``qwix.quantize_params``.

    Example:
      >>> nvars = native_variables(nmodel, variables, x, train=False)
    """
    abstract = jax.eval_shape(lambda: native_model.init(jax.random.key(0), *args, **kwargs))
    params = qwix.quantize_params(variables["params"], abstract["params"])
    return {**variables, "params": params}
