"""Import weights from timm / torchvision state dicts into archjax variables.

Each family registers a converter for the model names it can import. A
converter sees only numpy arrays (``{name: np.ndarray}``), so archjax needs no
torch at import time; the caller turns a torch state dict into numpy with
``{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}`` (this
module does that too if it is handed torch tensors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from archjax.models.registry import _check_name

# A converter maps (numpy state dict, model name) -> Flax variables
# ({"params": ..., "batch_stats": ...}) with exactly the tree that
# ``create(name).init`` produces.
Converter = Callable[[Mapping[str, np.ndarray], str], dict[str, Any]]
_CONVERTERS: list[tuple[re.Pattern, Converter]] = []


def register_converter(pattern: str) -> Callable[[Converter], Converter]:
    """Registers a converter for model names that fully match the regex ``pattern``."""

    def wrap(fn: Converter) -> Converter:
        _CONVERTERS.append((re.compile(pattern), fn))
        return fn

    return wrap


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; avoid importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_torch_state_dict(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Converts a timm/torchvision state dict of model ``name`` into Flax variables.

    Args:
      name: an archjax model name whose timm/torchvision counterpart produced
        ``state_dict`` (same variant, same number of classes).
      state_dict: ``torch_model.state_dict()`` (torch tensors or numpy arrays).

    Returns:
      Variables for ``archjax.models.create(name, num_classes=...)``: pass them to
      ``model.apply(variables, x, train=False)``. Images are NHWC for archjax,
      NCHW for torch.

    Raises:
      ValueError: no converter is registered for ``name``, or the state dict has
        keys the converter did not use or lacks keys it needs.

    Example:
      >>> tm = timm.create_model("resnet50", pretrained=False).eval()
      >>> variables = load_torch_state_dict("resnet50", tm.state_dict())
      >>> logits = archjax.models.create("resnet50").apply(variables, x_nhwc, train=False)
    """
    _check_name(name)
    arrays = {
        k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }
    for pattern, fn in _CONVERTERS:
        if pattern.fullmatch(name):
            return fn(arrays, name)
    raise ValueError(
        f"No torch weight converter for model {name!r}. Patterns with converters: "
        f"{', '.join(p.pattern for p, _ in _CONVERTERS) or 'none'}."
    )


class StateDictReader:
    """Hands out arrays by key and reports keys that were never used.

    Converters read through it so that a renamed or missing layer is an error
    rather than a silently random weight.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self._arrays = dict(arrays)
        self._used: set[str] = set()

    def __call__(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            raise ValueError(f"State dict has no key {key!r}.")
        self._used.add(key)
        return self._arrays[key]

    def conv(self, key: str) -> np.ndarray:
        """A torch conv weight [out, in, kh, kw] as a Flax kernel [kh, kw, in, out]."""
        return np.transpose(self(key), (2, 3, 1, 0))

    def dense(self, key: str) -> np.ndarray:
        """A torch linear weight [out, in] as a Flax kernel [in, out]."""
        return np.transpose(self(key))

    def linear(self, key: str) -> dict[str, np.ndarray]:
        """A torch Linear (``key.weight``, ``key.bias``) as Flax Dense params."""
        return {"kernel": self.dense(f"{key}.weight"), "bias": self(f"{key}.bias")}

    def layer_norm(self, key: str) -> dict[str, np.ndarray]:
        """A torch LayerNorm (``key.weight``, ``key.bias``) as Flax LayerNorm params."""
        return {"scale": self(f"{key}.weight"), "bias": self(f"{key}.bias")}

    def check_all_used(self) -> None:
        unused = sorted(set(self._arrays) - self._used)
        if unused:
            raise ValueError(f"State dict keys not used by the converter: {unused[:10]}.")
