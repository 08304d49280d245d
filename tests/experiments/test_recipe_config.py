"""Every optimizer / recipe piece is selectable by name in the experiment config."""

import jax
import numpy as np
import optax
import pytest

from archjax import data, optim
from archjax.train import get_policy
from experiments import config_utils
from experiments import train as main_job


def _config(**overrides):
    config = config_utils.load_config()
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    "key,bad,listed",
    [
        ("optimizer", "adamm", "adamw, lamb, lars, novograd, sgd"),
        ("schedule", "cosin", "constant, cosine, linear, one_cycle, step"),
        ("lr_scaling", "square", "linear, sqrt, none"),
        ("optimizer_state_bits", 16, "32, 8, 4"),
        ("precision", "fp16", "bf16, fp32"),
    ],
)
def test_unknown_name_lists_choices(key, bad, listed):
    with pytest.raises(ValueError, match=rf"\(config.{key}\). Choices: {listed}\."):
        config_utils.validate(_config(**{key: bad}))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"microbatches": 3}, "config.microbatches=3 must divide config.batch_size=128"),
        ({"sam_rho": -0.1}, "config.sam_rho must be >= 0"),
        ({"ema_decay": 1.0}, "config.ema_decay must be < 1"),
        ({"randaugment_magnitude": 40}, "randaugment_magnitude in"),
    ],
)
def test_impossible_recipe_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_utils.validate(_config(**overrides))


@pytest.mark.parametrize("name", optim.list_optimizers())
@pytest.mark.parametrize("schedule", optim.list_schedules())
def test_every_optimizer_and_schedule_builds_from_config(name, schedule):
    config = _config(optimizer=name, schedule=schedule, num_steps=20)
    config_utils.validate(config)
    tx = main_job.create_optimizer(config)
    params = {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}
    grads = {"kernel": np.full((2, 3), 0.1, np.float32), "bias": np.full(3, 0.1, np.float32)}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


def test_recipe_pieces_reach_optimizer_model_and_step():
    config = _config(
        optimizer="lamb",
        optimizer_state_bits=8,
        agc_clipping=0.01,
        spike_clipping=True,
        ema_decay=0.999,
        lr_scaling="sqrt",
        batch_size=512,
        sam_rho=0.05,
        sam_groups=2,
        microbatches=2,
        precision="bf16",
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        randaugment_layers=2,
        drop_path_rate=0.1,
        label_smoothing=0.1,
    )
    config_utils.validate(config)
    tx = main_job.create_optimizer(config)
    assert isinstance(tx, optax.GradientTransformation)
    params = {"conv": {"kernel": np.ones((3, 3, 16, 64), np.float32)}}
    state = tx.init(params)
    is_q = lambda x: isinstance(x, optim.QuantizedArray)  # noqa: E731
    assert any(is_q(x) for x in jax.tree.leaves(state, is_leaf=is_q))
    assert optim.find_ema_params(state) is not None
    kw = main_job.model_kwargs(config, 10)
    assert kw["dtype"] == get_policy("bf16").compute_dtype and kw["drop_path_rate"] == 0.1
    ds = data.get_dataset("digits", "train", image_size=8)
    recipe = main_job.create_recipe(config, ds)
    assert (recipe.sam_rho, recipe.sam_groups, recipe.microbatches) == (0.05, 2, 2)
    assert (recipe.mixup_alpha, recipe.cutmix_alpha, recipe.precision) == (0.2, 1.0, "bf16")
    assert recipe.augment is not None and recipe.label_smoothing == 0.1
    # lr_scaling="sqrt" from base_batch_size 128 to 512 doubles the peak learning rate.
    assert optim.scale_lr(config.learning_rate, 128, 512, "sqrt") == 2 * config.learning_rate


def test_tiny_run_with_ema_8bit_state_and_mixup(tmp_path):
    from tests.experiments.test_train import tiny_config

    config = tiny_config(
        num_steps=4,
        log_every=2,
        eval_every=4,
        checkpoint_every=4,
        optimizer="adamw",
        learning_rate=1e-2,
        optimizer_state_bits=8,
        ema_decay=0.9,
        mixup_alpha=0.2,
    )
    summary = main_job.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["steps"] == 4 and 0.0 <= summary["test_accuracy"] <= 1.0
    # Resuming restores the quantized state and the EMA (same tree as the abstract target).
    again = main_job.train_and_evaluate(config, str(tmp_path / "run"))
    assert again["resumed_from"] == 4
    assert again["test_accuracy"] == pytest.approx(summary["test_accuracy"])
