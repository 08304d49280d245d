"""archjax: a JAX/Flax toolkit for neural-architecture research.

Subpackages: :mod:`archjax.models` (model families and the name registry),
:mod:`archjax.layers` (normalization, standardized convs, initializers),
:mod:`archjax.data` (embedded datasets, TFDS, grain pipelines), :mod:`archjax.train`
(state and pure steps), :mod:`archjax.optim` (optimizer presets),
:mod:`archjax.parallel` (meshes, shardings) and :mod:`archjax.checkpoint` (Orbax).
"""

from archjax import checkpoint, data, layers, models, optim, parallel, train

__version__ = "0.1.0"

__all__ = ["checkpoint", "data", "layers", "models", "optim", "parallel", "train"]
