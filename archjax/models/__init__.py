"""Model families as Flax Linen modules, used through pure ``init``/``apply``.

Build any registered model by name with :func:`create`; :func:`list_models` lists
the names. Importing this package registers every family.
"""

from archjax.models import resnet as resnet  # noqa: F401  (registers the ResNet family)
from archjax.models.registry import create, list_models, register, tiny_kwargs
from archjax.models.resnet import ResNet
from archjax.models.torch_import import load_torch_state_dict, register_converter

__all__ = [
    "ResNet",
    "create",
    "list_models",
    "load_torch_state_dict",
    "register",
    "register_converter",
    "tiny_kwargs",
]
