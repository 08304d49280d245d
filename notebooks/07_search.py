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
# engine: every child is a trial in a resumable store), `make_evaluator` and `extract`
# (the child as a registered `ResNet` with its own parameters, whose outputs equal the
# supernet's for that child).
#
# *The source of this notebook is `notebooks/07_search.py` (jupytext, paired with the
# `.ipynb`); see notebooks/README.md.*

# %%
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import archjax.data
import archjax.train
from archjax import nas, studies

# %% tags=["parameters"]
# The budget of this run. The test suite runs the notebook on a toy budget: it inserts
# a cell after this one (tagged "parameters", papermill's convention) that overrides it.
SUPERNET_STEPS = 300  # sandwich-rule steps of the supernet
POPULATION, GENERATIONS = 8, 3  # evolutionary search: children per generation
FINETUNE_STEPS = 100  # steps of the extracted winner

# %% [markdown]
# ## 1. The search space and its supernet
#
# Three stages of CIFAR-style basic blocks on 8x8 digits: 1-3 blocks per stage, three
# widths per stage and 3x3 or 5x5 kernels. The supernet holds the largest choice of
# each; a child uses the first blocks of each stage, the leading channels of each
# layer and the centre of each kernel.

# %%
BATCH = 64
train_ds = archjax.data.get_dataset("digits", "train", image_size=8)
test_ds = archjax.data.get_dataset("digits", "test", image_size=8)
space = nas.ResNetSpace()  # depths (1, 2, 3), widths 8..64, kernels (3, 5), 8 px
net = nas.SuperResNet(space)
for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
    print(f"{name}: {arch} -> {space.cost(arch, channels=1)}")

# %% [markdown]
# ## 2. Train the supernet with the sandwich rule
#
# Each step: the largest child on the labels, the smallest and two random children on
# the largest child's predictions (in-place distillation).

# %%
tx = optax.sgd(optax.cosine_decay_schedule(0.1, SUPERNET_STEPS), momentum=0.9, nesterov=True)
state = archjax.train.create_train_state(net, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1))
step = jax.jit(nas.make_sandwich_step(net, tx, num_random=2))
batches = archjax.data.train_iterator(train_ds, batch_size=BATCH, seed=0, random_crop_pad=1)
losses = []
for _ in range(SUPERNET_STEPS):
    state, metrics = step(state, next(batches))
    losses.append((float(metrics["loss"]), float(metrics["loss_smallest"])))
batches.close()
print(f"last step: largest child loss {losses[-1][0]:.3f}, smallest {losses[-1][1]:.3f}")

# %% [markdown]
# ## 3. Search the children under a compute budget
#
# Regularized evolution on the study engine. The shared-weight evaluator re-estimates
# each child's BatchNorm statistics on training images, then scores it on held-out
# images: here the first 400 training images are the calibration set and the next 400 a
# validation set, so that the test split stays untouched for the final number. The
# budget is half the largest child's multiply-accumulates.


# %%
def arrays(ds, n, skip=0):
    batch = next(iter(archjax.data.eval_batches(ds, batch_size=len(ds))))
    return batch["image"][skip : skip + n], batch["label"][skip : skip + n]


x_cal, _ = arrays(train_ds, 400)
x_val, y_val = arrays(train_ds, 400, skip=400)
variables = {"params": state.params, "batch_stats": state.batch_stats}
evaluate = nas.make_evaluator(net, variables, images=x_val, labels=y_val, calibration=x_cal)


def child_trial(config, trial):
    return evaluate(nas.config_arch(space, config))


budget = {"macs": space.cost(space.largest(), channels=1)["macs"] / 2}
workdir = tempfile.mkdtemp(prefix="archjax_search_")
study = studies.Study(name="search", configs=(), trial=child_trial, objective="accuracy",
                      direction="maximize")  # fmt: skip
storage = studies.open_storage(studies.sqlite_url(workdir))
rows = nas.run_search(study, storage, workdir, supernet=space, budget=budget, channels=1,
                      strategy=nas.Evolution(population=POPULATION, generations=GENERATIONS,
                                             tournament=min(4, POPULATION)))  # fmt: skip
front = nas.pareto(rows)
best = max(rows, key=lambda r: r["accuracy"])
winner = nas.config_arch(space, best)
print(f"{len(rows)} children evaluated, {len(front)} on the frontier; budget {budget['macs']:.3g}")
print(f"best: {winner}, validation accuracy {best['accuracy']:.2%}, MACs {best['macs']:.3g}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for g in sorted({r["generation"] for r in rows}):
    mine = [r for r in rows if r["generation"] == g]
    ax.scatter([r["macs"] for r in mine], [100 * r["accuracy"] for r in mine], s=18,
               label=f"generation {g}")  # fmt: skip
ax.plot([r["macs"] for r in front], [100 * r["accuracy"] for r in front], "k-", lw=1,
        label="Pareto frontier")  # fmt: skip
ax.axvline(budget["macs"], color="0.6", ls="--", label="budget")
ax.set_xscale("log")
ax.set_xlabel("multiply-accumulates per image")
ax.set_ylabel("validation accuracy, shared weights (%)")
ax.set_title("Evolutionary search over the supernet's children")
ax.legend(fontsize="small")
plt.show()

# %% [markdown]
# ## 4. Extract the winner and fine-tune it
#
# `extract` slices the winner's weights out of the supernet into a standalone
# registered ResNet (`stage_sizes`, `stage_widths`, `kernel_sizes`); its outputs equal
# the supernet's for that child. Then its BatchNorm statistics are re-estimated and it
# is fine-tuned on its own for a few steps with the ordinary train step, and scored on
# the test split.

# %%
model, child = nas.extract(space, variables, winner)
x_test, y_test = arrays(test_ds, len(test_ds))
np.testing.assert_allclose(
    model.apply(child, x_test[:64]), net.apply(variables, x_test[:64], space.encode(winner)),
    atol=1e-4, rtol=1e-4,
)  # fmt: skip
calib = archjax.data.train_iterator(train_ds, batch_size=BATCH, seed=1)
model, child = nas.recalibrate(space, variables, winner, calib, num_batches=10)
calib.close()
eval_step = jax.jit(archjax.train.make_eval_step(model))
test = list(archjax.data.eval_batches(test_ds, batch_size=360))


def accuracy(state):
    out = [eval_step(state, b) for b in test]
    return float(sum(o["correct"] for o in out) / sum(o["count"] for o in out))


ft_tx = optax.sgd(optax.cosine_decay_schedule(0.02, FINETUNE_STEPS), momentum=0.9)
ft = archjax.train.create_train_state(model, ft_tx, rng=jax.random.key(1), input_shape=(1, 8, 8, 1))
ft = ft.replace(params=child["params"], batch_stats=child["batch_stats"],
                opt_state=ft_tx.init(child["params"]))  # fmt: skip
before = accuracy(ft)
ft_step = jax.jit(archjax.train.make_train_step(model, ft_tx))
batches = archjax.data.train_iterator(train_ds, batch_size=BATCH, seed=2, random_crop_pad=1)
for _ in range(FINETUNE_STEPS):
    ft, _ = ft_step(ft, next(batches))
batches.close()
after = accuracy(ft)
print(f"winner on the test split: {before:.2%} with the shared weights, {after:.2%} after "
      f"{FINETUNE_STEPS} fine-tuning steps")  # fmt: skip
assert all(r["macs"] <= budget["macs"] for r in rows)  # nothing over the budget was scored
assert jnp.isfinite(jnp.asarray(losses)).all()
assert after > 0.5, after  # far above chance (10%)
