# %% [markdown]
# # Curvature: Hessian traces, eigenvalues and spectral density of a trained network
#
# `archjax.analysis` measures the curvature of the loss with Hessian-vector products
# (never forming the Hessian): Hutchinson traces per layer, the top eigenvalues by
# Lanczos, and the eigenvalue density by stochastic Lanczos quadrature. Per-layer
# traces drive Hessian-aware mixed precision (HAWQ-V2), shown at the end.
#
# Here: a small ResNet trained briefly on 8x8 digits, then its curvature. Runs in well
# under a minute on a CPU.
#
# *The source of this notebook is `notebooks/04_curvature.py` (jupytext, paired with the
# `.ipynb`); see notebooks/README.md.*

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

import archjax.analysis
import archjax.data
import archjax.models
import archjax.optim
import archjax.parallel
import archjax.train
from archjax.quant import mixed

# %% tags=["parameters"]
# The budget of this run. The test suite runs the notebook on a toy budget: it inserts
# a cell after this one (tagged "parameters", papermill's convention) that overrides it.
NUM_STEPS = 120  # training steps
NUM_PROBES = 16  # Hutchinson probes
LANCZOS_STEPS = 20  # Lanczos steps for the top eigenvalues
SLQ_STEPS, SLQ_RUNS = 30, 2  # spectral density: Lanczos steps per run, runs

# %% [markdown]
# ## 1. Train a small model
#
# `resnet8` at quarter width on digits at their native 8x8 resolution, 120 SGD steps,
# data-parallel over every device (see the quickstart notebook for these pieces).

# %%
BATCH_SIZE, LR = 128, 0.1
train_ds = archjax.data.get_dataset("digits", "train", image_size=8)
model = archjax.models.create("resnet8", num_classes=10, width_multiplier=0.25)
tx = archjax.optim.create_optimizer(
    "sgd", learning_rate=LR, num_steps=NUM_STEPS, warmup_steps=10, nesterov=True
)
mesh = archjax.parallel.make_mesh()
state = archjax.train.create_train_state(
    model, tx, rng=jax.random.key(0), input_shape=(1, *train_ds.image_shape), mesh=mesh
)
train_step = archjax.train.jit_train_step(archjax.train.make_train_step(model, tx), mesh=mesh)
train_iter = archjax.data.train_iterator(train_ds, batch_size=BATCH_SIZE, seed=0)
for _ in range(NUM_STEPS):
    state, metrics = train_step(state, archjax.parallel.shard_batch(next(train_iter), mesh))
    loss = float(metrics["loss"])  # waits for each step (see the quickstart notebook)
print(f"final training loss {loss:.4f}")

# %% [markdown]
# ## 2. The loss as a function of the parameters
#
# `classifier_loss` closes over everything but the parameters (BatchNorm statistics in
# eval mode, as HAWQ does). The analysis functions take a single batch (a mini-batch
# estimate) or, with `stacked=True`, batches stacked on a leading axis, whose Hessian is
# that of the mean loss over all of them (the full-data estimate). Both are sharded
# over the mesh: the global mean loss already reduces across devices.

# %%
loss_fn = archjax.analysis.classifier_loss(model, state.variables())
params = state.params
batches = [next(train_iter) for _ in range(2)]
minibatch = archjax.parallel.shard_batch(batches[0], mesh)
full_data = archjax.analysis.stack_batches(batches, mesh)  # 2 x 128 examples
print(archjax.analysis.param_paths(params)[:4], "...")

# %% [markdown]
# ## 3. Per-layer Hessian traces (Hutchinson)
#
# One HVP per Rademacher probe gives every layer's block trace at once; the estimate
# comes with its standard error. HAWQ-V2 ranks layers by the *average* trace,
# `trace / number of weights`, restricted to the weights that get quantized (the conv
# and dense kernels: `subset=r"kernel$"`).

# %%
est = archjax.analysis.hutchinson_trace(
    loss_fn,
    params,
    full_data,
    key=jax.random.key(1),
    num_probes=NUM_PROBES,
    subset=r"kernel$",
    stacked=True,
)
print(f"trace of the kernels' Hessian: {est.trace:.2f} +- {est.stderr:.2f}")
layers = list(est.per_layer)
mean_trace = [est.per_layer[k] / est.num_params[k] for k in layers]
mean_err = [est.per_layer_stderr[k] / est.num_params[k] for k in layers]
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.bar(range(len(layers)), mean_trace, yerr=mean_err, capsize=3)
ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=8)
ax.set(
    ylabel="trace / #weights",
    title=f"Average Hessian trace per layer (Hutchinson, {NUM_PROBES} probes)",
)
ax.grid(axis="y", alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Top eigenvalues: mini-batch vs full data
#
# Lanczos (with full reorthogonalization) gives the largest eigenvalues, here of the
# Hessian of one batch and of the mean loss over both batches. Granziol et al.
# ("Learning Rates as a Function of Batch Size") predict that batch Hessians have
# larger extremal eigenvalues than the full-data one; two batches of a briefly trained
# model are far from enough to see it reliably. `2 / lambda_max` is the largest stable
# learning rate of gradient descent on a quadratic.

# %%
key = jax.random.key(2)
top_mini = archjax.analysis.top_eigenvalues(
    loss_fn, params, minibatch, key=key, k=3, num_steps=LANCZOS_STEPS
)
top_full = archjax.analysis.top_eigenvalues(
    loss_fn, params, full_data, key=key, k=3, num_steps=LANCZOS_STEPS, stacked=True
)
print("top-3, one batch of 128:", np.round(top_mini, 3))
print("top-3, 2 batches (256): ", np.round(top_full, 3))
print(f"2 / lambda_max = {2 / top_full[0]:.3f} (peak learning rate used: {LR})")

# %% [markdown]
# ## 5. Spectral density (stochastic Lanczos quadrature)
#
# Each run starts Lanczos from a random vector; the Ritz values and the squared first
# components of their eigenvectors are quadrature nodes and weights, smoothed with a
# Gaussian (Ghorbani et al., 2019). Most of the mass sits near zero, with a few
# outliers: the familiar bulk-and-outliers shape of trained networks.

# %%
sd = archjax.analysis.spectral_density(
    loss_fn,
    params,
    full_data,
    key=jax.random.key(3),
    num_steps=SLQ_STEPS,
    num_runs=SLQ_RUNS,
    stacked=True,
)
lo, hi = sd.nodes.min(), sd.nodes.max()
pad = 0.05 * (hi - lo)
grid = np.linspace(lo - pad, hi + pad, 2000)
sigma = 0.01 * (hi - lo)
density = sd.density(grid, sigma)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(grid, density + 1e-8)
ax.set(xlabel="eigenvalue", ylabel="density", title="Hessian spectral density (SLQ)")
ax.set_ylim(1e-6, None)
ax.grid(alpha=0.3)
plt.show()
print(f"SLQ trace estimate: {sd.moment() * sd.num_params:.2f} (all parameters)")

# %% [markdown]
# ## 6. Hessian-aware mixed precision (HAWQ-V2)
#
# Sensitivity of quantizing layer `l` to a candidate: `trace_l / n_l * ||Q(W_l) - W_l||^2`.
# `allocate` picks one candidate per layer that minimizes the total under a size
# budget, here the size of uniform 4-bit weights, exactly (an integer program).

# %%
candidates = [mixed.uniform_int(b) for b in (2, 4, 8)]
table = mixed.sensitivities(params, est, candidates)
budget = table.size_bits()[:, 1].sum()  # bits of uniform int4 weights
plan = mixed.allocate(table, budget)
print(plan)
print(f"uniform int4 sensitivity: {table.sensitivity[:, 1].sum():.4e}")

# %%
# The test suite runs this notebook: the numbers must be sane.
assert np.isfinite(est.trace) and est.stderr > 0
assert abs(sum(est.per_layer.values()) - est.trace) <= 1e-6 * abs(est.trace) + 1e-9
assert top_full[0] >= top_full[1] >= top_full[2] > 0
assert abs(np.sum(density) * (grid[1] - grid[0]) - 1) < 0.02
assert plan.cost <= budget and plan.sensitivity <= table.sensitivity[:, 1].sum()
print("ok")
