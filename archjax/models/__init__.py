"""Model families as Flax Linen modules, used through pure ``init``/``apply``.

Build any registered model by name with :func:`create`; :func:`list_models` lists
the names. Importing this package registers every family.
"""

from archjax.models import convnext as convnext  # noqa: F401  (registers the ConvNeXt family)
from archjax.models import mixer as mixer  # noqa: F401  (registers the MLP-Mixer family)
from archjax.models import nfnet as nfnet  # noqa: F401  (registers the NF-ResNet / NFNet family)
from archjax.models import regnet as regnet  # noqa: F401  (registers the RegNet family)
from archjax.models import resnet as resnet  # noqa: F401  (registers the ResNet family)
from archjax.models import vgg as vgg  # noqa: F401  (registers the VGG family)
from archjax.models import vit as vit  # noqa: F401  (registers the ViT family)
from archjax.models.registry import create, list_models, register, tiny_kwargs
from archjax.models.regnet import RegNet
from archjax.models.regnet_space import (
    RegNetConfig,
    RegNetParams,
    generate_regnet,
    regnet_flops,
    sample_anynet,
    sample_regnet,
)
from archjax.models.resnet import ResNet
from archjax.models.stats import count_flops, count_params, model_stats
from archjax.models.torch_import import load_torch_state_dict, register_converter

__all__ = [
    "RegNet",
    "RegNetConfig",
    "RegNetParams",
    "ResNet",
    "count_flops",
    "count_params",
    "create",
    "generate_regnet",
    "list_models",
    "load_torch_state_dict",
    "model_stats",
    "register",
    "register_converter",
    "regnet_flops",
    "sample_anynet",
    "sample_regnet",
    "tiny_kwargs",
]
