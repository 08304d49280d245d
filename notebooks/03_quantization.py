# %% [markdown]
# # Quantizing a trained model several ways: accuracy against model size
#
# Train a small float ResNet on digits, then quantize it after training (PTQ) with
# several rule sets, without touching the model code: `archjax.quant.quantize_model(model,
# rules)` intercepts its convolutions and dense layers, `calibrate_model` fixes static
# activation scales on a few batches, and `archjax.quant.report` counts the bytes.
#
# *The source of this notebook is `notebooks/03_quantization.py` (jupytext, paired with the
# `.ipynb`); see notebooks/README.md.*

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import archjax.data
import archjax.models
import archjax.train
from archjax import quant
from archjax.quant import BinaryFormat, FloatFormat, IntFormat, QuantRule

# %% tags=["parameters"]
# The budget of this run. The test suite runs the notebook on a toy budget: it inserts
# a cell after this one (tagged "parameters", papermill's convention) that overrides it.
NUM_STEPS = 200

# %% [markdown]
# ## 1. A float model
#
# A half-width ResNet-8 on 16x16 digits, 200 steps of SGD with Nesterov momentum.

# %%
train_ds = archjax.data.get_dataset("digits", "train", image_size=16)
test_ds = archjax.data.get_dataset("digits", "test", image_size=16)
model = archjax.models.create("resnet8", num_classes=10, width_multiplier=0.5)
tx = optax.sgd(optax.cosine_decay_schedule(0.1, NUM_STEPS), momentum=0.9, nesterov=True)
input_shape = (1, *train_ds.image_shape)
state = archjax.train.create_train_state(model, tx, rng=jax.random.key(0), input_shape=input_shape)
recipe = archjax.train.Recipe(label_smoothing=0.1)
step = jax.jit(archjax.train.make_train_step(model, tx, recipe=recipe))
batches = archjax.data.train_iterator(train_ds, batch_size=128, seed=0, random_crop_pad=1)
for _ in range(NUM_STEPS):
    state, metrics = step(state, next(batches))
variables = state.variables()
print(f"train loss {float(metrics['loss']):.3f}")

# %%
test = list(archjax.data.eval_batches(test_ds, batch_size=359))[0]
train_batches = iter(archjax.data.eval_batches(train_ds, batch_size=128))
calibration = [next(train_batches)["image"] for _ in range(4)]


def accuracy(model, variables):
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, test["image"])
    return float(jnp.sum((logits.argmax(-1) == test["label"]) * test["mask"]) / test["mask"].sum())


print(f"float test accuracy: {accuracy(model, variables):.2%}")

# %% [markdown]
# ## 2. Several quantizations of the same weights
#
# Rules say *which* layers (a regex on the module path) and *how* (formats, granularity,
# calibration); the first matching rule wins. `first_last_rules` keeps the stem and the
# classifier at 8 bits, as the low-bit ResNet papers do. BatchNorm is folded into the
# convolutions first, so that the weights that are quantized are the deployed ones.

# %%
int8, int4, int2 = IntFormat(bits=8), IntFormat(bits=4), IntFormat(bits=2)
fp8 = FloatFormat(exponent_bits=4, mantissa_bits=3, finite_only=True)
schemes = {
    "float": [],
    "w8a8": [QuantRule(pattern=".*", weight=int8, activation=int8)],
    "fp8 e4m3": [QuantRule(pattern=".*", weight=fp8, activation=fp8)],
    "w4a8": quant.first_last_rules(int8, int4, activation=int8),
    "w2a8": quant.first_last_rules(int8, int2, activation=int8, weight_calibration="mse"),
    "binary w": quant.first_last_rules(int8, BinaryFormat()),
}
folded = quant.fold_batchnorm(model, variables, jnp.zeros(input_shape))
results = {}
for name, rules in schemes.items():
    qmodel = quant.quantize_model(model, rules)
    qvars = quant.calibrate_model(qmodel, folded, calibration) if rules else folded
    size = quant.report(model, rules, input_shape).size_bytes
    results[name] = (size, accuracy(qmodel, qvars))
    print(f"{name:>9}: {size / 1024:6.1f} KiB, test accuracy {results[name][1]:.2%}")

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, (size, acc) in results.items():
    ax.scatter(size / 1024, 100 * acc)
    ax.annotate(name, (size / 1024, 100 * acc), textcoords="offset points", xytext=(4, 4))
ax.set_xscale("log")
ax.set_xlabel("model size (KiB, log scale)")
ax.set_ylabel("test accuracy (%)")
ax.set_title("PTQ of a ResNet-8 on digits")
plt.show()

# %%
float_size, float_acc = results["float"]
assert results["w8a8"][0] < float_size / 3  # 8-bit weights: about 4x smaller
assert results["w8a8"][1] > float_acc - 0.05, results
print("size / float size:", {k: round(s / float_size, 3) for k, (s, _) in results.items()})
