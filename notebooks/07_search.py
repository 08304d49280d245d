# %% [markdown]
# # Architecture search with a weight-sharing supernet
#
# BigNAS (Yu et al. 2020) trains one set of weights from which children of many sizes
# are taken "without extra retraining": each step trains the largest child, the
# smallest and a few random ones (the sandwich rule), the others distilled from the
# largest child's predictions. A search then scores children with the shared weights
# (each with its own re-estimated BatchNorm statistics) under a compute budget, and the
# winner is extracted as a standalone network and fine-tuned.
#
# The pieces are `archjax.nas`: `ResNetSpace` / `SuperResNet` (elastic depth, width and
# kernel size per stage; a child enters as arrays, so one compiled program runs every
# child), `make_sandwich_step`, `run_search` (random or evolutionary search on the study
# engine: every child is a trial in a resumable store), `make_evaluator`, `extract`
# (the child as a registered `ResNet` with its own parameters, whose outputs equal the
# supernet's for that child) and `recalibrate`.
#
# *The source of this notebook is `notebooks/07_search.py` (jupytext, paired with the
# `.ipynb`); see notebooks/README.md.*

# %%
import dataclasses
import math
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax

import archjax.data
import archjax.train
from archjax import nas, studies
from archjax.data.embedded import ArraySource

# %% tags=["parameters"]
# The budget of this run. The test suite runs the notebook on a toy budget: it inserts
# a cell after this one (tagged "parameters", papermill's convention) that overrides it.
DEPTHS = ((1, 2), (1, 2), (1, 2))  # per stage, the allowed numbers of blocks
WIDTHS = ((8, 12, 16), (16, 24, 32), (32, 48, 64))  # per stage, the allowed widths
KERNELS = (1, 3)  # the allowed kernel sizes
SUPERNET_STEPS = 300  # sandwich-rule steps of the supernet
POPULATION, GENERATIONS = 12, 4  # evolutionary search: children per generation
FINETUNE_STEPS = 100  # steps of the extracted winner

# %% [markdown]
# ## 1. The data and the search space
#
# 8x8 digits. The last 300 training images are held out as the search's validation
# set, so that the search ranks children on images the supernet never trained on and
# the test split stays untouched until the winner's final number.
#
# The space: stages of CIFAR-style basic blocks, a few depths and widths per stage and
# one kernel size per stage, 1x1 or 3x3 (5x5 kernels would make the supernet's step
# about five times slower on a CPU). The supernet holds the largest choice of each; a
# child uses the first blocks of each stage, the leading channels of each layer and the
# centre of each kernel. Costs are counted exactly from the architecture
# (`space.cost`), so no child is compiled to be costed.

# %%
BATCH, VALIDATION = 64, 300
train_ds = archjax.data.get_dataset("digits", "train", image_size=8)
test_ds = archjax.data.get_dataset("digits", "test", image_size=8)
source = train_ds.source
fit_ds = dataclasses.replace(train_ds, split=f"train[:-{VALIDATION}]",
                             source=ArraySource(source.images[:-VALIDATION],
                                                source.labels[:-VALIDATION]))  # fmt: skip
val_ds = dataclasses.replace(train_ds, split=f"train[-{VALIDATION}:]",
                             source=ArraySource(source.images[-VALIDATION:],
                                                source.labels[-VALIDATION:]))  # fmt: skip
print(f"{len(fit_ds)} training, {len(val_ds)} validation, {len(test_ds)} test images")

space = nas.ResNetSpace(depths=DEPTHS, widths=WIDTHS, kernels=KERNELS, resolutions=(8,))
net = nas.SuperResNet(space)
size = math.prod(len(c) for c in space.choices().values())
print(f"{size} children in the space")
for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
    print(f"  {name}: {arch} -> {space.cost(arch, channels=1)}")

# %% [markdown]
# ## 2. Train the supernet with the sandwich rule
#
# Each step: the largest child on the labels, the smallest and two random children on
# the largest child's predictions (in-place distillation); one optimizer update with
# the sum of their gradients. The random children are drawn inside the compiled step,
# so it compiles once.

# %%
tx = optax.sgd(optax.cosine_decay_schedule(0.1, SUPERNET_STEPS), momentum=0.9, nesterov=True)
state = archjax.train.create_train_state(net, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1))
step = jax.jit(nas.make_sandwich_step(net, tx, num_random=2))
batches = archjax.data.train_iterator(fit_ds, batch_size=BATCH, seed=0, random_crop_pad=1)
losses = []
for i in range(SUPERNET_STEPS):
    state, metrics = step(state, next(batches))
    losses.append((float(metrics["loss"]), float(metrics["loss_smallest"])))
    if (i + 1) % max(1, SUPERNET_STEPS // 5) == 0 or i + 1 == SUPERNET_STEPS:
        print(f"step {i + 1:4d}: loss of the largest child {losses[-1][0]:.3f}, "
              f"of the smallest {losses[-1][1]:.3f}")  # fmt: skip
batches.close()

# %% [markdown]
# ## 3. Search the children under a compute budget
#
# The shared-weight evaluator first re-estimates each child's BatchNorm statistics (the
# supernet's follow the largest child only) by running the child in train mode over
# calibration images: 30 batches of 32, about `3 / (1 - momentum)` batches for
# BatchNorm's momentum of 0.9 to forget the supernet's statistics. Then it scores the
# child on the held-out validation images. The largest and the smallest child show the
# range.
#
# The search is regularized evolution on the study engine (each child a trial in a
# SQLite store: a search run again re-evaluates nothing) under a budget of half the
# largest child's multiply-accumulates; children over it are never evaluated.


# %%
def arrays(ds):
    batch = next(iter(archjax.data.eval_batches(ds, batch_size=len(ds))))
    return batch["image"], batch["label"]


x_fit, _ = arrays(fit_ds)
x_val, y_val = arrays(val_ds)
variables = {"params": state.params, "batch_stats": state.batch_stats}
evaluate = nas.make_evaluator(net, variables, images=x_val, labels=y_val,
                              calibration=x_fit[: 30 * 32], batch_size=32)  # fmt: skip
extremes = {name: evaluate(getattr(space, name)()) for name in ("largest", "smallest")}
for name, m in extremes.items():
    print(f"{name} child: validation accuracy {m['accuracy']:.2%} ({m['macs']:.3g} MACs)")


def child_trial(config, trial):
    return evaluate(nas.config_arch(space, config))


budget = {"macs": space.cost(space.largest(), channels=1)["macs"] / 2}
workdir = tempfile.mkdtemp(prefix="archjax_search_")
study = studies.Study(name="search", configs=(), trial=child_trial, objective="accuracy",
                      direction="maximize")  # fmt: skip
storage = studies.open_storage(studies.sqlite_url(workdir))
strategy = nas.Evolution(population=POPULATION, generations=GENERATIONS,
                         tournament=min(4, POPULATION))  # fmt: skip
rows = nas.run_search(study, storage, workdir, supernet=space, budget=budget, channels=1,
                      strategy=strategy)  # fmt: skip
for g in range(GENERATIONS):
    acc = [r["accuracy"] for r in rows if r["generation"] == g]
    if acc:
        print(f"generation {g}: {len(acc)} children, best {max(acc):.2%}, "
              f"median {np.median(acc):.2%}")  # fmt: skip
front = nas.pareto(rows)
best = max(rows, key=lambda r: r["accuracy"])
winner = nas.config_arch(space, best)
print(f"{len(rows)} children under the budget of {budget['macs']:.3g} MACs, "
      f"{len(front)} on the Pareto frontier")  # fmt: skip
print(f"winner: {winner}\n  validation accuracy {best['accuracy']:.2%}, "
      f"{best['macs']:.3g} MACs, {best['params']} parameters")  # fmt: skip

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for g in sorted({r["generation"] for r in rows}):
    mine = [r for r in rows if r["generation"] == g]
    ax.scatter([r["macs"] for r in mine], [100 * r["accuracy"] for r in mine], s=18,
               label=f"generation {g}")  # fmt: skip
ax.plot([r["macs"] for r in front], [100 * r["accuracy"] for r in front], "k-", lw=1,
        label="Pareto frontier")  # fmt: skip
for name, marker in (("largest", "^"), ("smallest", "v")):
    m = extremes[name]
    ax.scatter([m["macs"]], [100 * m["accuracy"]], marker=marker, color="0.3", label=name)
ax.axvline(budget["macs"], color="0.6", ls="--", label="budget")
ax.set_xscale("log")
ax.set_xlabel("multiply-accumulates per image")
ax.set_ylabel("validation accuracy (%)")
ax.set_title("Evolutionary search with the shared weights")
ax.legend(fontsize="small", loc="upper left")
plt.show()

# %% [markdown]
# ## 4. Extract the winner and fine-tune it
#
# `extract` slices the winner's weights out of the supernet into a standalone
# registered ResNet (`stage_sizes`, `stage_widths`, `kernel_sizes`); its outputs equal
# the supernet's for that child (checked here on test images). `recalibrate` extracts
# it with its BatchNorm statistics re-estimated as the evaluator does (30 batches of 32
# training images); then it is fine-tuned on its own with the ordinary train step and
# scored on the test split.

# %%
model, child = nas.extract(space, variables, winner)
x_test = arrays(test_ds)[0][:64]
extracted = jax.jit(model.apply)(child, x_test)
shared = jax.jit(net.apply)(variables, x_test, space.encode(winner))
np.testing.assert_allclose(extracted, shared, atol=1e-4, rtol=1e-4)
print(f"extracted child == supernet child: logits differ by {np.abs(extracted - shared).max():.1e}")

calib = archjax.data.train_iterator(fit_ds, batch_size=32, seed=1)
model, child = nas.recalibrate(space, variables, winner, calib, num_batches=30)
calib.close()
eval_step = jax.jit(archjax.train.make_eval_step(model))
test = list(archjax.data.eval_batches(test_ds, batch_size=360))


def accuracy(state):
    out = [eval_step(state, b) for b in test]
    return float(sum(o["correct"] for o in out) / sum(o["count"] for o in out))


ft_tx = optax.sgd(optax.cosine_decay_schedule(0.02, FINETUNE_STEPS), momentum=0.9)
ft = archjax.train.TrainState.from_variables(child)
ft = ft.replace(opt_state=ft_tx.init(ft.params), rng=jax.random.key_data(jax.random.key(1)))
before = accuracy(ft)
ft_step = jax.jit(archjax.train.make_train_step(model, ft_tx))
batches = archjax.data.train_iterator(fit_ds, batch_size=BATCH, seed=2, random_crop_pad=1)
ft_losses = []
for _ in range(FINETUNE_STEPS):
    ft, metrics = ft_step(ft, next(batches))
    ft_losses.append(float(metrics["loss"]))
batches.close()
after = accuracy(ft)
q = max(1, FINETUNE_STEPS // 4)
print(f"fine-tuning loss: {np.mean(ft_losses[:q]):.3f} over the first {q} steps, "
      f"{np.mean(ft_losses[-q:]):.3f} over the last {q}")  # fmt: skip
print(f"winner on the test split: {before:.2%} with the shared weights, {after:.2%} after "
      f"{FINETUNE_STEPS} fine-tuning steps")  # fmt: skip

# %% [markdown]
# ## 5. Checks
#
# What must hold on any budget, the suite's toy one included: the supernet learned
# (well above chance for its largest child), the search kept to its budget, which
# binds (the largest child is over it), the winner is on the frontier, and fine-tuning
# lowered the loss without losing what the shared weights knew.

# %%
assert np.isfinite(losses).all() and np.isfinite(ft_losses).all()
assert extremes["largest"]["accuracy"] > 0.3, extremes  # chance is 10%
assert extremes["largest"]["macs"] > budget["macs"]
assert all(r["macs"] <= budget["macs"] for r in rows)  # nothing over the budget was scored
assert best in front
assert np.mean(ft_losses[-q:]) < np.mean(ft_losses[:q]), ft_losses
assert after > 0.3 and after > before - 0.05, (before, after)
