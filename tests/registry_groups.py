"""The registry at its tiny sizes, shared by the registry-wide tests.

Names whose tiny networks are identical (e.g. resnet50 and resnet101 differ only in
depth, which the tiny size overrides) form one group, so each distinct network is
compiled once; the grouping is by the module's full repr, so any knob that differs
gives its own group.
"""

import archjax.models as models


def tiny(name: str):
    """The registered model ``name`` at its tiny size, with 5 classes."""
    return models.create(name, num_classes=5, **models.tiny_kwargs(name))


def distinct_tiny_networks() -> list[list[str]]:
    """Registered names grouped by identical tiny network, in registry order."""
    groups = {}
    for name in models.list_models():
        groups.setdefault(repr(tiny(name)), []).append(name)
    return list(groups.values())


GROUPS = distinct_tiny_networks()
