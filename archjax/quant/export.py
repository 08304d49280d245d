"""Export a quantized model's weights as packed integer (or FP) codes plus scales (Orbax).

``export(qmodel, variables, directory, x)`` stores, for every weight-quantized layer,
the codes of ``archjax.quant.quantize_codes`` (formats of 1, 2 or 4 bits packed
``8 // bits`` per byte, others in their int8/uint8/int16 code dtype), the scales and
zero points, and every other variable in float, as one Orbax checkpoint with a JSON
description. ``load(qmodel, directory)`` returns a model and variables whose outputs
are identical to the exported model's: kernels are decoded with ``dequantize``
(``dequantize(quantize_codes(w)) == fake_quant(w)`` exactly) and the reloaded model
quantizes activations only, since its weights already lie on the grid.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from archjax.quant.calibration import QParams, calibrate_tensor
from archjax.quant.numerics import dequantize, quantize_codes
from archjax.quant.rules import match_rule
from archjax.quant.transform import quant_rules, quantize_model, quantized_weights, unquantized

_PACKABLE = (1, 2, 4)


def _packable(fmt) -> bool:
    """Codes that are bit patterns (not levels) of 1, 2 or 4 bits."""
    return fmt.code_offset is not None and fmt.bits in _PACKABLE


def pack(codes: np.ndarray, bits: int, offset: int = 0) -> np.ndarray:
    """Packs ``codes + offset`` (each in ``[0, 2**bits)``), ``8 // bits`` per uint8, low bits first.

    Example:
      >>> pack(np.array([1, -2, 3, 0], np.int8), 4, offset=8)   # int4 codes
    """
    u = (np.asarray(codes).astype(np.int32).ravel() + offset).astype(np.uint8)
    per = 8 // bits
    u = np.pad(u, (0, -len(u) % per)).reshape(-1, per)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(u << shifts, axis=1).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, shape, dtype, offset: int = 0) -> np.ndarray:
    """Inverse of :func:`pack`: codes of ``shape`` and ``dtype``."""
    per = 8 // bits
    shifts = (np.arange(per) * bits).astype(np.uint8)
    u = (np.asarray(packed)[:, None] >> shifts) & np.uint8(2**bits - 1)
    n = int(np.prod(shape))
    return (u.ravel()[:n].astype(np.int32) - offset).astype(dtype).reshape(shape)


def _key(path) -> str:
    return "/".join(path)


def export(model, variables: dict[str, Any], directory: str, *args, **kwargs) -> dict[str, Any]:
    """Writes the quantized weights (codes + scales) and the other variables to ``directory``.

    Args:
      model: a module from :func:`archjax.quant.quantize_model` (static weight scales; learned
        LSQ scales and computed kernels such as weight-standardized convs are refused).
      variables: its variables (``params``, ``batch_stats``, calibrated ``quant_stats``).
      directory: a new directory (absolute or relative path).
      *args: example model inputs (only shapes are used), e.g. ``x``.
      **kwargs: model keyword arguments, e.g. ``train=False``.

    Returns:
      The JSON description that was written (per layer: format, bits, packed or not).

    Raises:
      ValueError: a quantized layer's kernel is computed or has a learned scale.

    Example:
      >>> export(qmodel, qvars, "/tmp/resnet20_w4", x, train=False)
      >>> model2, vars2 = load(qmodel, "/tmp/resnet20_w4")
    """
    weights = quantized_weights(model, *args, **kwargs)
    variables = unfreeze(dict(variables))
    flat = flatten_dict(variables["params"])
    arrays: dict[str, Any] = {"codes": {}, "scale": {}, "zero_point": {}}
    meta: dict[str, Any] = {"layers": {}}
    for op, (ppath, rule) in weights.items():
        if ppath is None or rule.learned_scale:
            raise ValueError(
                f"Layer {op!r}: export needs a kernel parameter used as is and static scales "
                "(computed kernels, e.g. weight-standardized convs, and LSQ are not supported)."
            )
        w = flat.pop(ppath)
        fmt, gran = rule.weight, rule.weight_granularity
        qp = calibrate_tensor(w, fmt, granularity=gran, method=rule.weight_calibration)
        codes = np.asarray(quantize_codes(w, fmt, qp, granularity=gran))
        key = _key(ppath)
        packed = _packable(fmt)
        arrays["codes"][key] = pack(codes, fmt.bits, fmt.code_offset) if packed else codes
        arrays["scale"][key] = np.asarray(qp.scale)
        if qp.zero_point is not None:
            arrays["zero_point"][key] = np.asarray(qp.zero_point)
        meta["layers"][key] = {
            "op": op,
            "format": fmt.name,
            "bits": fmt.bits,
            "packed": packed,
            "shape": list(w.shape),
            "code_dtype": str(codes.dtype),
            "bytes": int(arrays["codes"][key].nbytes),
        }
    arrays["float"] = {**variables, "params": unflatten_dict(flat)}
    arrays = {k: v for k, v in arrays.items() if v}
    ckpt = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    ckpt.save(
        os.path.abspath(directory),
        args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
    )
    ckpt.close()
    return meta


def load(model, directory: str):
    """Reads an :func:`export` directory.

    Args:
      model: the quantized module that was exported (its rules and structure).
      directory: the directory :func:`export` wrote.

    Returns:
      ``(reload_model, variables)``: the model quantizing activations only and
      variables whose kernels are the decoded (dequantized) weights; its outputs
      equal those of the exported model.

    Example:
      >>> model2, vars2 = load(qmodel, "/tmp/resnet20_w4")
      >>> logits = model2.apply(vars2, x, train=False)
    """
    ckpt = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    restored = ckpt.restore(
        os.path.abspath(directory),
        args=ocp.args.Composite(arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
    ckpt.close()
    arrays, meta = restored["arrays"], restored["meta"]
    rules = quant_rules(model)
    variables = dict(arrays["float"])
    flat = flatten_dict(unfreeze(variables["params"]))
    for key, info in meta["layers"].items():
        rule = _rule_for(rules, info["op"])
        fmt, gran = rule.weight, rule.weight_granularity
        codes = arrays["codes"][key]
        if info["packed"]:
            codes = unpack(codes, fmt.bits, info["shape"], info["code_dtype"], fmt.code_offset)
        zp = arrays.get("zero_point", {}).get(key)
        qp = QParams(scale=jnp.asarray(arrays["scale"][key]), zero_point=zp)
        flat[tuple(key.split("/"))] = dequantize(jnp.asarray(codes), fmt, qp, granularity=gran)
    variables["params"] = unflatten_dict(flat)
    act_only = [dataclasses.replace(r, weight=None) for r in rules]
    reloaded = quantize_model(unquantized(model), act_only, momentum=type(model)._quant_momentum)
    return reloaded, jax.tree.map(jnp.asarray, variables)


def _rule_for(rules, op: str):
    return match_rule(rules, op.split(":")[0])
