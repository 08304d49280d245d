"""Non-finite gradients (issue 15, §3): ``skip_nonfinite_updates`` skips and counts them."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archjax import models
from archjax.train import create_train_state, make_train_step
from experiments import train as main_job
from experiments.plotting import read_metrics
from tests.experiments.test_train import tiny_config


def test_nonfinite_gradients_skip_the_update_and_are_counted():
    config = tiny_config(skip_nonfinite_updates=1, warmup_steps=0)
    model = models.create(config.model, num_classes=10, **config.model_kwargs.to_dict())
    tx = main_job.create_optimizer(config)
    state = create_train_state(model, tx, rng=jax.random.key(0), input_shape=(1, 8, 8, 1))
    step = jax.jit(make_train_step(model, tx))
    images = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
    good = {"image": images, "label": jnp.arange(8) % 10}
    bad = {"image": images.at[3, 2, 2, 0].set(jnp.nan), "label": good["label"]}

    skipped, _ = step(state, bad)
    # Nothing moved (parameters, momentum, BatchNorm statistics), and it is counted.
    chex.assert_trees_all_equal(skipped.params, state.params)
    chex.assert_trees_all_equal(skipped.batch_stats, state.batch_stats)
    chex.assert_trees_all_equal(skipped.opt_state.inner_state, state.opt_state.inner_state)
    assert main_job.skipped_updates(skipped) == {"skipped_updates": 1, "skipped_in_a_row": 1}
    applied, _ = step(skipped, good)
    assert main_job.skipped_updates(applied) == {"skipped_updates": 1, "skipped_in_a_row": 0}
    assert not np.array_equal(applied.params["head"]["kernel"], state.params["head"]["kernel"])
    # More non-finite updates in a row than allowed: apply_if_finite gives up and applies.
    once, _ = step(applied, bad)
    twice, _ = step(once, bad)
    assert main_job.skipped_updates(twice) == {"skipped_updates": 3, "skipped_in_a_row": 2}
    assert not np.isfinite(np.asarray(twice.params["head"]["kernel"])).all()

    off = main_job.create_optimizer(tiny_config())
    assert main_job.skipped_updates(state.replace(opt_state=off.init(state.params))) == {}


def test_diverging_run_logs_skipped_updates_and_stops_once_they_run_out(tmp_path):
    """A learning rate this large gives non-finite gradients: they are skipped (and
    logged) until more come in a row than allowed; then the run stops, naming that."""
    workdir = str(tmp_path / "run")
    config = tiny_config(learning_rate=1e6, skip_nonfinite_updates=2, warmup_steps=0)
    with pytest.raises(FloatingPointError, match="after skipping 2 non-finite updates in a row"):
        main_job.train_and_evaluate(config, workdir)
    train = [
        r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"
    ]
    assert train and all("skipped_updates" in r for r in train)
