"""The usual trial function: the main job's ``train_and_evaluate`` with the trial's overrides.

A trial config holds overrides of ``experiments/configs/default.py`` (dotted keys
reach nested fields: ``"model_kwargs.width_multiplier": 0.5``). Each trial trains
in its own workdir, so a retried trial resumes from its own Orbax checkpoint.

  Study(name=..., configs=grid(...), trial=train_trial, check=check_train_config,
        setup=setup, objective="test_loss")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ml_collections

from archjax import models, parallel, studies
from experiments.configs.default import get_config
from experiments.plotting import read_metrics

# Free-form dicts of the default config: their keys go to models.create / the dataset.
FREE_FORM = ("model_kwargs", "dataset_kwargs")


def train_config(overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """The default config with ``overrides``; an unknown key or a wrong type raises."""
    config = get_config()
    config.lock()  # no new keys: a misspelt override fails here
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if parents and parents[-1] in FREE_FORM:
            with node.unlocked():
                node[leaf] = value
        else:
            node[leaf] = value
    return config


def check_train_config(overrides: dict[str, Any]) -> None:
    """Raises for an override the main job does not know (before anything is stored)."""
    train_config(overrides)


def setup() -> None:
    """Joins a jax.distributed run when the environment describes one (slice-wide mode)."""
    parallel.initialize()


# Compute accounting per (model, knobs, shapes) in this process: XLA counts the FLOPs of a
# compiled forward pass, which trials of one model in a worker need not compile again.
_COMPUTE: dict[tuple, dict[str, float]] = {}


def _training_compute(model: str, kwargs: dict[str, Any], **shape: int) -> dict[str, float]:
    """``studies.training_compute`` of ``models.create(model, **kwargs)``, once per process."""
    key = (model, repr(sorted(kwargs.items())), *sorted(shape.items()))
    if key not in _COMPUTE:
        # The built module: a model knob named like an argument (ViT's image_size) reaches it.
        _COMPUTE[key] = studies.training_compute(models.create(model, **kwargs), **shape)
    return dict(_COMPUTE[key])


def train_trial(
    config: dict[str, Any],
    trial: studies.Trial,
    *,
    wrap_model: Callable[[Any], Any] | None = None,
    init_variables: dict[str, Any] | None = None,
    train_split: bool = False,
    sharpness_batches: int = 0,
) -> dict[str, Any]:
    """Trains ``config`` in ``trial.workdir``; test metrics, curve and compute accounting.

    ``wrap_model`` and ``init_variables`` go to the main job (QAT; a fine-tune from given
    variables). ``train_split``: also ``train_loss`` / ``train_accuracy`` of the final model
    on the un-augmented train split, evaluated like the test split (a generalization gap).
    ``sharpness_batches``: also ``train_hessian_top``, the largest Hessian eigenvalue of the
    final model's training loss (eval mode) over that many full un-augmented train batches
    (:func:`hessian_top_eigenvalue`).
    """
    from experiments import train as main_job  # JAX loads here, in the worker

    cfg = train_config(config)
    summary = main_job.train_and_evaluate(
        cfg, trial.workdir, wrap_model=wrap_model, init_variables=init_variables
    )
    if summary["interrupted"]:  # preempted: leave the trial RUNNING-stale to be retried
        raise KeyboardInterrupt(f"trial {trial.number} interrupted by a signal")
    for record in read_metrics(os.path.join(trial.workdir, "metrics.jsonl")):
        if record["split"] == "test":
            trial.report(record["step"], record["loss"])
    train_ds, _ = main_job.datasets(cfg)
    kwargs = main_job.model_kwargs(cfg, train_ds.num_classes)
    kwargs.pop("dtype", None)  # FLOPs are counted in fp32
    compute = _training_compute(
        cfg.model,
        kwargs,
        image_size=cfg.image_size,
        channels=train_ds.image_shape[-1],
        batch_size=cfg.batch_size,
        steps=summary["steps"],
    )
    metrics = {
        "test_loss": summary["test_loss"],
        "test_accuracy": summary["test_accuracy"],
        "steps": summary["steps"],
        "resumed_from": summary["resumed_from"],
        "train_wall_time": summary["wall_time"],
        **compute,
        **{k: summary[k] for k in ("sparsity", "macs_kept") if k in summary},  # pruned runs
    }
    if train_split or sharpness_batches:
        from experiments.quant import common as quant_common

        model = quant_common.model_for(cfg, train_ds)
        model = wrap_model(model) if wrap_model else model
        variables = quant_common.final_variables(cfg, trial.workdir, model)
    if train_split:
        train = quant_common.evaluate(cfg, model, variables, train_ds)
        metrics.update(train_loss=train["loss"], train_accuracy=train["accuracy"])
    if sharpness_batches:
        metrics["train_hessian_top"] = hessian_top_eigenvalue(
            model, variables, train_ds, batch_size=cfg.batch_size,
            num_batches=sharpness_batches, seed=cfg.seed,
        )  # fmt: skip
    return metrics


def hessian_top_eigenvalue(
    model, variables, ds, *, batch_size: int, num_batches: int, seed: int = 0, steps: int = 20
) -> float:
    """The largest Hessian eigenvalue of ``model``'s mean training loss (eval mode).

    Over the first ``num_batches`` full un-augmented batches of ``ds`` (the full-data Hessian
    of those images, ``archjax.analysis`` with ``stacked=True``), by ``steps`` Lanczos steps.
    Chen et al. (2021) compare converged models by this number (their Table 3).
    """
    import jax

    from archjax import analysis

    batches = full_batches(ds, batch_size=batch_size, num_batches=num_batches)
    if len(batches) < num_batches:
        raise ValueError(
            f"sharpness needs {num_batches} full train batches of {batch_size}; "
            f"the train split gives {len(batches)}"
        )
    loss_fn = analysis.classifier_loss(model, variables)
    top = analysis.top_eigenvalues(
        loss_fn, variables["params"], analysis.stack_batches(batches),
        key=jax.random.key(seed), num_steps=steps, stacked=True,
    )  # fmt: skip
    return float(top[0])


def full_batches(ds, *, batch_size: int, num_batches: int) -> list[dict[str, Any]]:
    """Up to ``num_batches`` un-augmented ``{"image", "label"}`` batches of ``ds``, in order,
    leaving out a padded last batch (data for Hessian estimates)."""
    import numpy as np

    from archjax import data

    batches = []
    for batch in data.eval_batches(ds, batch_size=batch_size):
        if len(batches) == num_batches:
            break
        if np.all(batch["mask"] == 1):
            batches.append({"image": batch["image"], "label": batch["label"]})
    return batches
