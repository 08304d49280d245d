"""The registry at its tiny sizes, shared by the registry-wide tests.

Names whose tiny networks are identical (e.g. resnet50 and resnet101 differ only in
depth, which the tiny size overrides) form one group, so each distinct network is
compiled once; the grouping is by the module's full repr, so any knob that differs
gives its own group.
"""

import archjax.models as models

# XLA:CPU options for the registry-wide programs: they are compiled once and run for
# milliseconds, so compile time is all that counts. The classic elemental emitters
# compile them 2-3x faster than the newer fusion emitters (measured, tiny dm_nfnet_f0:
# gradient 5.4 s -> 2.2 s of CPU time, eval 1.4 s -> 0.8 s; regnetx_002's gradient
# 3.2 s -> 1.2 s); level 0 is tests/conftest.py's LLVM level, repeated here so that a
# run with other XLA_FLAGS compiles these programs the same way.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


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
