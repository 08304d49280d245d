# %% [markdown]
# # Pruning the main job's model to 90% sparsity with IMP
#
# Iterative magnitude pruning (IMP, Frankle & Carbin 2019) with rewinding (Frankle et
# al. 2020): train, remove the smallest-magnitude weights that remain (globally, over
# every prunable kernel), rewind the survivors to their values at an early step k,
# and train again; repeat until the network is 90% sparse. The pieces are
# `archjax.sparsity`: masks are pytrees of bools beside the parameters,
# `keep_masked` wraps the optimizer so that pruned weights stay exactly zero (the mask
# lives in the optimizer state, so it is checkpointed with the train state), and
# `rewind` restores the step-k weights and optimizer state under a new mask.
#
# The main job does the same from the command line, one run per round:
#
# ```
# python -m experiments.train --workdir=runs/imp0 --config.sparsity.rewind_step=3
# python -m experiments.train --workdir=runs/imp1 --config.sparsity.method=magnitude \
#     --config.sparsity.rewind_step=3 --config.sparsity.target=0.55 \
#     --config.sparsity.imp_from=runs/imp0
# ```
#
# Here the loop runs in memory, so the train step compiles once for every round.
#
# *The source of this notebook is `notebooks/06_sparsity.py` (jupytext, paired with the
# `.ipynb`); see notebooks/README.md.*

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import archjax.data
import archjax.models
import archjax.optim
import archjax.sparsity as sp
import archjax.train

# %% tags=["parameters"]
# The budget of this run. The test suite runs the notebook on a toy budget: it inserts
# a cell after this one (tagged "parameters", papermill's convention) that overrides it.
STEPS = 100  # training steps of every round

# %% [markdown]
# ## 1. The main job's model and optimizer, with a mask
#
# The main job trains a CIFAR-style ResNet on digits with SGD + Nesterov momentum and a
# cosine schedule; here a half-width ResNet-8 on 8x8 images (the sparsity studies' run)
# to keep the notebook fast. The first convolution and the classifier stay dense
# (`first_last_rules`, the default).

# %%
REWIND_STEP, BATCH = 3, 64
train_ds = archjax.data.get_dataset("digits", "train", image_size=8)
test_ds = archjax.data.get_dataset("digits", "test", image_size=8)
model = archjax.models.create("resnet8", num_classes=10, width_multiplier=0.5)
inner = archjax.optim.create_optimizer(
    "sgd", learning_rate=0.1, num_steps=STEPS, warmup_steps=5, weight_decay=5e-4
)
tx = sp.keep_masked(inner, lambda params: jax.tree.map(lambda p: p == p, params))  # all kept
state = archjax.train.create_train_state(
    model, tx, rng=jax.random.key(0), input_shape=(1, *train_ds.image_shape)
)
recipe = archjax.train.Recipe(label_smoothing=0.1)
step = jax.jit(archjax.train.make_train_step(model, tx, recipe=recipe))
eval_step = jax.jit(archjax.train.make_eval_step(model))
test = list(archjax.data.eval_batches(test_ds, batch_size=360))


def accuracy(state):
    out = [eval_step(state, b) for b in test]
    return float(sum(o["correct"] for o in out) / sum(o["count"] for o in out))


def train(state, data_state=None):
    """Trains to STEPS; returns the final state and (state, data position) at REWIND_STEP."""
    batches = archjax.data.train_iterator(train_ds, batch_size=BATCH, seed=0, random_crop_pad=1)
    if data_state is not None:  # a rewound run sees the batches the dense run saw after k
        batches.set_state(data_state)
    early = None
    while int(state.step) < STEPS:
        if int(state.step) == REWIND_STEP:
            early = (state, batches.get_state())
        state, _ = step(state, next(batches))
    batches.close()
    return state, early


# %% [markdown]
# ## 2. Dense training, then rounds of prune -> rewind -> train
#
# Each round removes 55% of the remaining prunable weights: 55%, 80%, 91% sparsity
# after three rounds. `global_magnitude(..., mask=old)` keeps what is gone gone.

# %%
flags = sp.prunable(state.params)
final, (early, data_k) = train(state)
results = [(0.0, accuracy(final))]
print(f"dense: test accuracy {results[0][1]:.2%}")
mask = None
for target in sp.imp_sparsities(0.55, 3):
    mask = sp.global_magnitude(final.params, target, prunable=flags, mask=mask)
    params, opt_state = sp.rewind(early.params, mask, opt_state=early.opt_state, optimizer=tx)
    rewound = early.replace(params=params, opt_state=opt_state)
    final, _ = train(rewound, data_k)
    results.append((sp.sparsity_of(mask, prunable=flags), accuracy(final)))
    print(f"sparsity {results[-1][0]:.1%}: test accuracy {results[-1][1]:.2%}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
s, a = np.array(results).T
ax.plot(100 * s, 100 * a, marker="o", label=f"IMP, rewind to step {REWIND_STEP}")
ax.axhline(100 * a[0], color="0.6", ls="--", label="dense")
ax.set_xlabel("sparsity of the prunable kernels (%)")
ax.set_ylabel("test accuracy (%)")
ax.set_title("IMP on ResNet-8 (1/2 width), 8x8 digits")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. What the last network is
#
# Pruned weights are exactly zero in the trained parameters; the storage cost counts
# the kept values plus one bit per position (a bitmap), or 4-bit values with a
# quantization policy (`bits=` may be a function of the parameter path).

# %%
for p, m in zip(jax.tree.leaves(final.params), jax.tree.leaves(mask), strict=True):
    assert (np.asarray(p)[~np.asarray(m)] == 0).all()
cost32 = sp.sparse_cost(final.params, mask, bits=32)
cost4 = sp.sparse_cost(final.params, mask, bits=4)
print(f"{cost32.nonzero} of {cost32.params} parameters kept ({cost32.sparsity:.1%} sparse)")
print(f"fp32 dense {cost32.dense_bits / 8192:.1f} KiB -> sparse {cost32.sparse_bits / 8192:.1f}"
      f" KiB; 4-bit sparse {cost4.sparse_bits / 8192:.1f} KiB")  # fmt: skip
assert results[-1][0] >= 0.9
assert results[-1][1] > 0.5, results  # far above chance (10%) at 91% sparsity
assert results[-1][1] > results[0][1] - 0.1, results  # within 10 points of dense
assert jnp.isfinite(jnp.asarray(a)).all()
