# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A scaling study on the study engine
#
# This notebook runs a small study with `archjax.studies`, reads the trial store
# back as plain rows, fits a scaling law with a bootstrap interval and draws it.
# The study is the example of `docs/studies.md`
# (`experiments/studies/mlp_scaling.py`): NumPy MLPs of several widths trained for
# several numbers of steps on digits, so it runs in seconds on a laptop CPU. A real
# study swaps in `experiments.studies.common.train_trial` (the main job).
#
# *The source of this notebook is `notebooks/05_scaling_study.py` (jupytext
# percent format); regenerate the `.ipynb` with
# `jupytext --to ipynb notebooks/05_scaling_study.py` and execute it.*

# %%
import tempfile

import numpy as np
from IPython.display import Image, display

from archjax import studies
from archjax.studies import fits, plots

# %% [markdown]
# ## Define and run the study
#
# `studies.load` imports the study file and calls its `define(quick=...)`. The
# store is SQLite in a fresh directory; `init` enqueues every config that is not
# already in the store, and `work` claims and runs trials until none is left
# (`python -m archjax.studies run ... --workers N` would start N such workers).

# %%
study = studies.load("../experiments/studies/mlp_scaling.py", quick=True)
workdir = tempfile.mkdtemp(prefix="scaling_study_")
storage = studies.open_storage(studies.sqlite_url(workdir))
queued = studies.init(study, storage)
ran = studies.work(study, storage, workdir, show_progress=False)
print(f"{len(study.configs)} configs, {len(queued)} queued, {ran} run")

# %% [markdown]
# Running it again runs nothing: every config already has a complete trial.

# %%
print("queued on a re-run:", studies.init(study, storage))

# %% [markdown]
# ## Read the store
#
# One plain dict per trial: its number, state, config, metrics and error.

# %%
opt = studies.runner.load(study, storage)
rows = [r for r in studies.rows(opt) if r["state"] == "COMPLETE"]
print(f"{'width':>5} {'steps':>5} {'train FLOPs':>12} {'loss':>7} {'accuracy':>8}")
for r in sorted(rows, key=lambda r: r["train_flops"]):
    print(f"{r['width']:>5} {r['steps']:>5} {r['train_flops']:>12.3g} "
          f"{r['loss']:>7.4f} {r['accuracy']:>8.3f}")  # fmt: skip

# %% [markdown]
# ## Fit the compute-optimal frontier
#
# The frontier holds the trials that no other trial beats on both compute and
# loss. On it we fit `L = a C^-b + c`; the interval of `b` comes from 500 bootstrap
# resamples, each fitted from the grid of starting points again.

# %%
pts = np.array([[r["train_flops"], r["loss"]] for r in rows])
front = fits.pareto_front(pts, ["minimize", "minimize"])
law = fits.fit_power_law(pts[front, 0], pts[front, 1], resamples=500)
b_lo, b_hi = law.intervals["b"]
print(f"{front.sum()} frontier points: b = {law.b:.3f}, 95% interval [{b_lo:.3f}, {b_hi:.3f}]")
print(f"a = {law.a:.3g}, c = {law.c:.3f} (irreducible loss)")

# %%
path = plots.scaling_law(pts[:, 0], pts[:, 1], law, f"{workdir}/loss_vs_compute.png",
                         frontier=front, ylabel="held-out loss")  # fmt: skip
display(Image(path))

# %% [markdown]
# ## Curves and the best width per budget
#
# Trials reported their held-out loss every 50 steps (`trial.report`); the store
# keeps those curves. `best_per_group` picks, per number of steps, the width with
# the lowest loss.

# %%
labels = {r["trial"]: f"width {r['width']}, {r['steps']} steps" for r in rows}
path = plots.curves(studies.curves(opt), f"{workdir}/curves.png", ylabel="held-out loss",
                    labels=labels)  # fmt: skip
display(Image(path))
for g in fits.best_per_group(rows, group="steps", by="width", metric="loss", seed="seed"):
    print(f"{g['group']} steps: best width {g['best']} (loss {g['metric_mean']:.4f})")
