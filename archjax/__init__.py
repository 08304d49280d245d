"""archjax: a JAX/Flax toolkit for neural-architecture research.

Subpackages: :mod:`archjax.models` (model families and the name registry),
:mod:`archjax.layers` (normalization, standardized convs, initializers),
:mod:`archjax.data` (embedded datasets, TFDS, grain pipelines), :mod:`archjax.train`
(state and pure steps), :mod:`archjax.optim` (optimizer presets),
:mod:`archjax.parallel` (meshes, sharding rules, multi-process), :mod:`archjax.quant`
(quantization formats, the model transform, PTQ, cost model, mixed precision),
:mod:`archjax.sparsity` (pruning masks, masked training, low-rank, LoRA),
:mod:`archjax.nas` (zero-cost proxies),
:mod:`archjax.analysis` (Hessian tools), :mod:`archjax.checkpoint` (Orbax),
:mod:`archjax.compile_cache` (JAX's persistent compilation cache) and
:mod:`archjax.studies` (the study engine).
"""

import importlib

__version__ = "0.1.0"

__all__ = [
    "analysis",
    "checkpoint",
    "compile_cache",
    "data",
    "layers",
    "models",
    "nas",
    "optim",
    "parallel",
    "quant",
    "sparsity",
    "train",
]


def __getattr__(name: str):
    """Imports a subpackage on first use (PEP 562).

    So ``import archjax.studies`` in a study worker does not load JAX, Flax and
    Orbax before a trial asks for them.
    """
    if name in __all__ or name == "studies":
        return importlib.import_module(f"archjax.{name}")
    raise AttributeError(f"module 'archjax' has no attribute {name!r}")
