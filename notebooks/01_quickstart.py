# %% [markdown]
# # archjax quickstart: a ResNet on digits in a few hundred steps
#
# This notebook walks through the pieces of an archjax training run, using the library
# functions directly: a dataset, a model from the registry, an optimizer preset, a device
# mesh, a sharded train step, evaluation and a checkpoint round trip. It runs in well under
# a minute on a laptop CPU.
#
# *The source of this notebook is `notebooks/01_quickstart.py` (jupytext, paired with the
# `.ipynb`); see notebooks/README.md.*

# %%
import tempfile

import chex
import jax
import matplotlib.pyplot as plt
import numpy as np

import archjax.checkpoint
import archjax.data
import archjax.models
import archjax.optim
import archjax.parallel
import archjax.train

print("models:  ", archjax.models.list_models())
print("datasets:", archjax.data.list_datasets())
print("devices: ", jax.devices())

# %% tags=["parameters"]
# The budget of this run. The test suite runs the notebook on a toy budget: it inserts
# a cell after this one (tagged "parameters", papermill's convention) that overrides it.
NUM_STEPS = 300

# %% [markdown]
# ## 1. Data
#
# `get_dataset` returns one split as a `Dataset` record: a random-access source of uint8
# images and integer labels plus the statistics used to normalise them. Digits is
# scikit-learn's 8x8 digits, upsampled here to 16x16; it ships with scikit-learn, so
# nothing is downloaded.

# %%
train_ds = archjax.data.get_dataset("digits", "train", image_size=16)
test_ds = archjax.data.get_dataset("digits", "test", image_size=16)
print(f"train: {len(train_ds)} examples, test: {len(test_ds)} examples")
print(f"image shape {train_ds.image_shape}, {train_ds.num_classes} classes")

fig, axes = plt.subplots(1, 8, figsize=(8, 1.4))
for i, ax in enumerate(axes):
    example = train_ds.source[i]
    ax.imshow(example["image"][..., 0], cmap="gray_r")
    ax.set_title(example["label"])
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 2. Model, optimizer, mesh and train state
#
# `archjax.models.create` builds any registered model by name, and keyword arguments turn
# its knobs: here the smallest CIFAR-style ResNet, `resnet8`, at half width
# (`width_multiplier=0.5`), which trains in seconds on a CPU. The optimizer preset is SGD
# with Nesterov momentum and a warmup + cosine learning-rate schedule. `make_mesh()` puts
# every device on one `data` axis: the batch is split over it and the train state is
# replicated, so the global batch size must be a multiple of the number of devices.

# %%
BATCH_SIZE = 128  # global batch size: a multiple of the number of devices

model = archjax.models.create("resnet8", num_classes=train_ds.num_classes, width_multiplier=0.5)
tx = archjax.optim.create_optimizer(
    "sgd",
    learning_rate=0.1,
    num_steps=NUM_STEPS,
    warmup_steps=20,
    nesterov=True,
    weight_decay=5e-4,
)
mesh = archjax.parallel.make_mesh()
input_shape = (1, *train_ds.image_shape)
state = archjax.train.create_train_state(
    model, tx, rng=jax.random.key(0), input_shape=input_shape, mesh=mesh
)
num_params = sum(p.size for p in jax.tree.leaves(state.params))
print(f"{num_params:,} parameters; mesh of {mesh.size} device(s) on axis 'data'")

# %% [markdown]
# The train and eval steps are pure functions of `(state, batch)`; `jit_train_step` and
# `jit_eval_step` compile them for the mesh. The train step donates its input state, so
# always keep the state it returns.

# %%
train_step = archjax.train.jit_train_step(archjax.train.make_train_step(model, tx), mesh=mesh)
eval_step = archjax.train.jit_eval_step(archjax.train.make_eval_step(model), mesh=mesh)

# %% [markdown]
# ## 3. Training
#
# `train_iterator` yields endless shuffled, normalised and augmented (random 1-pixel
# shifts) batches; `shard_batch` turns each into a global array split over the `data`
# axis. The first step compiles, the rest reuse the compiled program.

# %%
train_iter = archjax.data.train_iterator(train_ds, batch_size=BATCH_SIZE, seed=0, random_crop_pad=1)
# `float(metrics["loss"])` waits for every step. Keep it: besides being simple, it stops
# the host from queueing many steps ahead, which on a CPU with forced host devices (the
# test suite's 8 devices on a 2-core machine) intermittently deadlocks XLA's all-reduce:
# the client's thread pool is only max(cores, devices) threads wide.
losses = []
for step in range(1, NUM_STEPS + 1):
    batch = archjax.parallel.shard_batch(next(train_iter), mesh)
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
    if step % 50 == 0:
        print(f"step {step}: loss {np.mean(losses[-50:]):.3f}")

# %% [markdown]
# ## 4. Evaluation
#
# `eval_batches` makes one ordered pass over the test split, padding the last batch and
# marking the padding with `mask == 0`. The eval step returns sums (`correct`, `count`),
# so the accuracy over the split is the total of correct answers over the total count.

# %%
correct = count = 0.0
for batch in archjax.data.eval_batches(test_ds, batch_size=BATCH_SIZE):
    out = eval_step(state, archjax.parallel.shard_batch(batch, mesh))
    correct += float(out["correct"])
    count += float(out["count"])
test_accuracy = correct / count
print(f"test accuracy: {test_accuracy:.4f} ({correct:.0f} / {count:.0f})")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(1, NUM_STEPS + 1), losses, lw=0.8)
ax.set(xlabel="step", ylabel="training loss", yscale="log", title="resnet8 (half width) on digits")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## 5. Checkpoints
#
# `Checkpointer` saves the train state (and, optionally, the data iterator's position) with
# Orbax. A restore needs an abstract target, the shapes, dtypes and shardings of the state,
# which `abstract_train_state` computes without running the model.

# %%
with (
    tempfile.TemporaryDirectory() as workdir,
    archjax.checkpoint.Checkpointer(workdir) as ckpt,
):
    ckpt.save(int(state.step), state, data_state=train_iter.get_state())
    ckpt.wait_until_finished()  # saves are asynchronous by default
    target = archjax.train.abstract_train_state(model, tx, input_shape=input_shape, mesh=mesh)
    restored, data_state = ckpt.restore(target)

chex.assert_trees_all_equal(restored.params, state.params)
chex.assert_trees_all_equal(restored, state)
assert data_state == train_iter.get_state()
print(f"restored step {int(restored.step)}: params, optimizer state and data position match")

# %% [markdown]
# Finally, a sanity check (the test suite runs this notebook, so a broken library fails
# it): a few hundred steps of resnet8 should classify digits well above 80% accuracy.

# %%
assert test_accuracy > 0.8, f"test accuracy {test_accuracy:.3f} is too low"
print(f"final test accuracy: {test_accuracy:.2%}")
