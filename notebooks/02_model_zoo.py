# %% [markdown]
# # archjax model zoo: any model by name, its size and cost, and a depth sweep
#
# Every family (ResNet and its B/C/D/RS/wide variants, VGG, NF-ResNet/NFNet, RegNet,
# ViT, MLP-Mixer, ConvNeXt) is registered by name. A model is a Flax Linen module used
# through pure `init`/`apply`; its knobs (depth, width, resolution, classes, dtype) are
# keyword arguments, so a scaling study is a loop.
#
# *The source of this notebook is `notebooks/02_model_zoo.py` (jupytext, paired with the
# `.ipynb`); see notebooks/README.md.*

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from archjax import models

# %% tags=["parameters"]
# The budget of this run. The test suite runs the notebook on a toy budget: it inserts
# a cell after this one (tagged "parameters", papermill's convention) that overrides it.
DEPTHS = [8, 20, 32, 44, 56]  # the depth sweep's CIFAR ResNets

names = models.list_models()
print(len(names), "models:", ", ".join(names))

# %% [markdown]
# ## Build any model by name
# Parameter counts come from `jax.eval_shape`, so even ViT-L costs no memory or FLOPs.

# %%
zoo = ["resnet50", "resnetrs50", "vgg16_bn", "dm_nfnet_f0", "regnety_016"]
zoo += ["vit_base_patch16_224", "mixer_b16_224", "convnext_tiny"]
for name in zoo:
    n = models.count_params(models.create(name), (1, 224, 224, 3))
    print(f"{name:24s} {n / 1e6:8.2f} M parameters")

# %% [markdown]
# ## Pure `init` / `apply`
# Variables live in named collections (`params`, `batch_stats`); training mode returns
# the updated BatchNorm statistics instead of hiding them.

# %%
model = models.create("resnet20", num_classes=10)
x = jnp.zeros((4, 32, 32, 3))
variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
print({k: len(jax.tree.leaves(v)) for k, v in variables.items()}, "arrays per collection")
logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
print("logits", logits.shape, "| updated collections:", list(updates))

# %% [markdown]
# ## A depth sweep: CIFAR ResNets and their plain twins
# Parameters and FLOPs (XLA cost analysis of the compiled forward pass; a multiply-add
# counts as 2 FLOPs) for depth 6n+2, with and without shortcuts.

# %%
rows = []
for depth in DEPTHS:
    stats = models.model_stats(f"resnet{depth}", image_size=32, num_classes=10)
    plain = models.count_params(
        models.create(f"resnet{depth}", residual=False, num_classes=10), (1, 32, 32, 3)
    )
    rows.append((depth, stats["params"], plain, stats["flops"]))
    kp, mf = stats["params"] / 1e3, stats["flops"] / 1e6
    print(f"resnet{depth:<3d} {kp:7.1f} k params (plain {plain / 1e3:7.1f} k) {mf:7.1f} MFLOPs")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
ax1.plot(DEPTHS, [r[1] / 1e3 for r in rows], "o-", label="residual")
ax1.plot(DEPTHS, [r[2] / 1e3 for r in rows], "s--", label="plain")
ax1.set(xlabel="depth", ylabel="parameters (k)")
ax1.legend()
ax2.plot(DEPTHS, [r[3] / 1e6 for r in rows], "o-")
ax2.set(xlabel="depth", ylabel="MFLOPs at 32 px")
fig.tight_layout()

# %%
# FLOPs grow linearly with depth (each block adds the same work); the check keeps the
# notebook honest when it runs in the test suite.
flops = [r[3] for r in rows]
steps = np.diff(flops)
assert max(steps) / min(steps) < 1.05, steps
assert all(r[1] > r[2] for r in rows)  # shortcut projections add parameters
