r"""The main archjax job: train and evaluate an image classifier, resumably.

  python -m experiments.train                                  # ResNet-20 on digits
  python -m experiments.train --workdir=runs/r32 --config.model=resnet32
  python -m experiments.train --config=experiments/configs/default.py:model=resnet32

Writes into the workdir (default ``runs/<config name>``): ``checkpoints/``,
``metrics.jsonl`` (one JSON object per log/eval event), the same scalars as
TensorBoard event files (``tensorboard --logdir runs/``), ``curves.png`` and
``config.json``. Running the same command again resumes from the latest
checkpoint. SIGINT/SIGTERM (Ctrl-C, a preemption notice) save a checkpoint at the
current step before exiting (status 128 + signal), so a re-run loses nothing; in a
multi-process run a signal to any one process makes every process save the same step
and exit. A hard kill loses at most ``checkpoint_every`` steps.

This file is meant to be read and forked, not subclassed: the loop is flat.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from tqdm import tqdm

from archjax import compile_cache, data, models, optim, parallel, sparsity
from archjax.checkpoint import CheckpointDiskFullError, Checkpointer, claim_directory
from archjax.train import (
    Recipe,
    TrainState,
    abstract_train_state,
    create_train_state,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_train_step,
)
from experiments import config_utils, pruning
from experiments.plotting import plot_curves

# Keys that may change between a run and its resumption; any other change would
# make the checkpoint mean something else, so it is refused.
RESUMABLE_KEYS = ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                  # A run may resume on another device count, mesh or set of hosts.
                  "num_devices", "mesh", "distributed", "keep_best_checkpoints",
                  "async_checkpoints", "compilation_cache_dir")  # fmt: skip


def _schedule_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Peak learning rate and warmup steps at ``config.batch_size`` (``lr_scaling``)."""
    return {
        "learning_rate": optim.scale_lr(
            config.learning_rate, config.base_batch_size, config.batch_size, config.lr_scaling
        ),
        # Warmup spans the same number of examples at any batch size when scaling is on.
        "warmup_steps": config.warmup_steps
        if config.lr_scaling == "none"
        else optim.scale_warmup_steps(
            config.warmup_steps, config.base_batch_size, config.batch_size
        ),
    }


def create_optimizer(config: ml_collections.ConfigDict):
    """The optax optimizer that ``config`` names, with its schedule and recipe pieces.

    With ``config.sparsity`` on, it keeps the mask (in its state) and pruned weights at 0.
    """
    tx = optim.create_optimizer(
        config.optimizer,
        num_steps=config.num_steps,
        **_schedule_kwargs(config),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
        schedule=config.schedule,
        state_bits=config.optimizer_state_bits,
        agc_clipping=config.agc_clipping,
        spike_clipping=config.spike_clipping,
        ema_decay=config.ema_decay,
        ema_warmup=config.ema_warmup,
        skip_nonfinite=config.skip_nonfinite_updates,
    )
    return pruning.wrap_optimizer(config, tx)


def create_recipe(config: ml_collections.ConfigDict, ds: data.Dataset) -> Recipe:
    """The step-side recipe pieces that ``config`` turns on (see archjax.train.Recipe)."""
    augment = None
    if config.randaugment_layers:
        augment = data.rand_augment_normalized(
            num_layers=config.randaugment_layers,
            magnitude=config.randaugment_magnitude,
            mean=ds.mean,
            std=ds.std,
        )
    return Recipe(
        label_smoothing=config.label_smoothing,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        sam_rho=config.sam_rho,
        sam_groups=config.sam_groups,
        microbatches=config.microbatches,
        precision=config.precision,
        augment=augment,
    )


def learning_rate_schedule(config: ml_collections.ConfigDict):
    """The learning rate at each step of ``create_optimizer(config)``, for logging."""
    kw = _schedule_kwargs(config)
    kw["warmup_steps"] = min(kw["warmup_steps"], config.num_steps - 1)  # as create_optimizer
    return optim.create_schedule(config.schedule, num_steps=config.num_steps, **kw)


def datasets(config: ml_collections.ConfigDict) -> tuple[data.Dataset, data.Dataset]:
    """The train and test splits that ``config`` names."""
    data_kw = dict(config.dataset_kwargs.to_dict(), image_size=config.image_size)
    train_ds = data.get_dataset(config.dataset, "train", data_dir=config.data_dir, **data_kw)
    test_ds = data.get_dataset(config.dataset, "test", data_dir=config.data_dir, **data_kw)
    return train_ds, test_ds


# Knobs for ``models.create`` (defined next to ``validate``, which checks them).
model_kwargs = config_utils.model_kwargs


# One dispatch per step for the running sums of the train metrics.
add_metrics = jax.jit(functools.partial(jax.tree.map, jnp.add))


def eval_view(state: TrainState) -> TrainState:
    """The state to evaluate: with the parameter EMA if the optimizer keeps one (masked)."""
    ema = optim.find_ema_params(state.opt_state)
    if ema is not None and (mask := pruning.mask_of(state)) is not None:
        ema = sparsity.apply_mask(ema, mask)  # the average of pruned weights decays, not 0
    return state if ema is None else state.replace(params=ema)


def evaluate(eval_step, state, ds, *, batch_size: int, mesh) -> dict[str, float]:
    """Test loss and accuracy over a whole split (every example counted once)."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in data.eval_batches(ds, batch_size=batch_size):
        out = jax.device_get(eval_step(state, parallel.shard_batch(batch, mesh)))
        totals = {k: totals[k] + float(out[k]) for k in totals}
    n = max(totals["count"], 1.0)
    return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n}


def skipped_updates(state: TrainState) -> dict[str, int]:
    """Updates skipped for non-finite gradients (``skip_nonfinite_updates``): in all and
    in a row now, from ``optax.apply_if_finite``'s state; ``{}`` when skipping is off."""
    total = optax.tree_utils.tree_get(state.opt_state, "total_notfinite")
    if total is None:
        return {}
    in_a_row = optax.tree_utils.tree_get(state.opt_state, "notfinite_count")
    return {"skipped_updates": int(total), "skipped_in_a_row": int(in_a_row)}


def _check_finite(
    loss: float, step: int, config: ml_collections.ConfigDict, ckpt_dir: str, skipped: dict
):
    """Stops a diverged run with a message that says where and what to change.

    A non-finite loss whose updates were all skipped (``skip_nonfinite_updates``) left
    the state finite: the run goes on until more updates in a row fail than allowed.
    """
    if np.isfinite(loss):
        return
    if skipped and skipped["skipped_in_a_row"] <= config.skip_nonfinite_updates:
        return
    gave_up = (
        f" after skipping {config.skip_nonfinite_updates} non-finite updates in a row"
        if skipped
        else ""
    )
    raise FloatingPointError(
        f"Training loss is {loss} at step {step}{gave_up} (model {config.model}, "
        f"learning_rate {config.learning_rate}). Checkpoints before this step are intact "
        f"in {ckpt_dir}; lower the learning rate or add warmup."
    )


def warm_start(state: TrainState, variables: dict[str, Any], tx) -> TrainState:
    """``state`` with ``variables``' leaves at their paths, on the same devices; a fresh
    optimizer state for the new parameters."""
    flat = flax.traverse_util.flatten_dict
    new = {"params": state.params, "batch_stats": state.batch_stats, **state.collections}
    targets = flat(new)
    given = flat({k: v for k, v in variables.items() if k in new})
    unknown = sorted("/".join(k) for k in given if k not in targets)
    if unknown:
        raise ValueError(f"init_variables has leaves the model lacks: {unknown[:5]}")
    for key, value in given.items():
        old = targets[key]
        if np.shape(value) != old.shape:
            raise ValueError(
                f"init_variables leaf {'/'.join(key)} has shape {np.shape(value)}; "
                f"the model's is {old.shape}."
            )
        targets[key] = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
    new = flax.traverse_util.unflatten_dict(targets)
    params = new.pop("params")
    opt_sharding = jax.tree.map(lambda x: x.sharding, state.opt_state)
    return state.replace(
        params=params,
        batch_stats=new.pop("batch_stats", {}),
        collections={**state.collections, **new},
        opt_state=jax.jit(tx.init, out_shardings=opt_sharding)(params),
    )


class _Interrupt:
    """SIGINT/SIGTERM -> a stop at a step boundary that every process agrees on.

    One process: a handler sets a flag that :meth:`stop_signal` reads after each step.
    Several processes: the signal reaches one of them, yet all must save the same step
    (each joins the save). So SIGTERM is left to the preemption notifier that
    ``jax.distributed.initialize`` installs: it tells the coordination service, which
    picks the first step that no process has passed yet, and Orbax's
    ``reached_preemption(step)``, asked after every step on every process, is true at
    that step everywhere. SIGINT (Ctrl-C on one host) is passed on as a SIGTERM.
    """

    def __init__(self, *, multiprocess: bool):
        self.multiprocess = multiprocess
        self.signum: int | None = None

    def __enter__(self):
        # A Python SIGTERM handler would replace the runtime's notifier (one per signal).
        signals = (signal.SIGINT,) if self.multiprocess else (signal.SIGINT, signal.SIGTERM)
        self._old = {s: signal.signal(s, self._handle) for s in signals}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: the user really wants out
            raise KeyboardInterrupt
        self.signum = signum
        if self.multiprocess:
            signal.raise_signal(signal.SIGTERM)  # to the runtime's preemption notifier

    def stop_signal(self, step: int, ckpt: Checkpointer) -> int | None:
        """The signal to save and stop for after ``step``, or ``None`` (once per step)."""
        if not self.multiprocess:
            return self.signum
        # Every process must ask at every step: the sync point is computed from the steps.
        return signal.SIGTERM if ckpt.reached_preemption(step) else None

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    wrap_model: Callable[[Any], Any] | None = None,
    init_variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint).

    ``wrap_model`` (optional) maps the created model to the one trained, e.g.
    ``lambda m: archjax.quant.quantize_model(m, rules)`` for quantization-aware training.
    ``init_variables`` (optional) starts a fresh run from these variables instead of the
    random init (a fine-tune, e.g. QAT of a trained float model): each of their leaves
    replaces the leaf at the same path; leaves they lack (quantizer state) keep their init.

    Returns:
      A summary dict: ``test_accuracy``, ``test_loss``, ``steps``, ``wall_time``,
      ``workdir``, ``resumed_from`` (step or None), ``interrupted`` (bool).
    """
    start = time.time()
    config_utils.validate(config)
    # Before anything compiles: a re-run or a resumed run loads its programs from disk.
    compile_cache.enable_compilation_cache(config.compilation_cache_dir)
    parallel.initialize(**config.distributed.to_dict())  # no-op for one process
    mesh = parallel.make_mesh(config.num_devices, shape=config.mesh.to_dict())
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh)
    is_main = parallel.is_main_process()
    # Everything the config names is built before the workdir is written.
    train_ds, test_ds = datasets(config)
    model = models.create(config.model, **model_kwargs(config, train_ds.num_classes))
    claim_directory(workdir)  # never a non-empty directory that is not archjax's
    os.makedirs(workdir, exist_ok=True)
    config_utils.check_or_write(config, workdir, resumable_keys=RESUMABLE_KEYS)

    if wrap_model is not None:
        model = wrap_model(model)
    tx = create_optimizer(config)
    input_shape = (1, *train_ds.image_shape)
    train_iter = data.train_iterator(
        train_ds,
        batch_size=config.batch_size,
        seed=config.seed,
        random_crop_pad=config.random_crop_pad,
        random_flip=config.random_flip,
        # A background thread puts batches on the devices two steps ahead of the loop.
        device_put=functools.partial(parallel.shard_batch, mesh=mesh),
    )

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_interval_steps=config.checkpoint_every,
        max_to_keep=config.keep_checkpoints,
        async_save=config.async_checkpoints,
        best_metric="test_accuracy" if config.keep_best_checkpoints else None,
        keep_best=config.keep_best_checkpoints,
    )
    resumed_from = None
    if ckpt.latest_step() is None:
        state = create_train_state(
            model, tx, rng=jax.random.key(config.seed), input_shape=input_shape, mesh=mesh
        )
        if config.sparsity.imp_from is not None:  # an IMP round: prune and rewind first
            state, data_state = pruning.start_round(
                config,
                model,
                state,
                optimizer_for=create_optimizer,
                input_shape=input_shape,
                mesh=mesh,
            )
            if data_state is not None:
                train_iter.set_state(data_state)

        if init_variables is not None:
            state = warm_start(state, init_variables, tx)
    else:  # the latest good checkpoint; a corrupt one is reported and set aside
        target = abstract_train_state(model, tx, input_shape=input_shape, mesh=mesh)
        state, data_state = ckpt.restore(target)
        resumed_from = int(state.step)
        if data_state is not None:
            train_iter.set_state(data_state)
        print(f"Resuming from step {resumed_from} ({ckpt.directory}/{resumed_from}).", flush=True)
    step = int(state.step)

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    tensorboard = None
    if is_main:
        config_utils.truncate_metrics(metrics_path, after_step=step)
        # Event files next to metrics.jsonl with the same scalars; on resume, purge_step
        # hides the events past the checkpoint, as truncate_metrics drops their records.
        # Imported here: tensorboardX imports torch when it is installed (seconds), which
        # a config error or `--help` should not wait for.
        from tensorboardX import SummaryWriter

        tensorboard = SummaryWriter(workdir, purge_step=None if resumed_from is None else step)
    lr_schedule = learning_rate_schedule(config)
    train_step = jit_train_step(
        make_train_step(model, tx, recipe=create_recipe(config, train_ds)),
        mesh=mesh,
        state=state,  # keeps the FSDP / tensor-parallel layout from step to step
    )
    eval_step = jit_eval_step(make_eval_step(model, precision=config.precision), mesh=mesh)
    sparse = pruning.LoopHooks(config, model, workdir, mesh=mesh, state=state)

    def log(record: dict) -> None:
        if is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            for key, value in record.items():
                if key not in ("step", "split"):
                    tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def run_eval(record: bool = True) -> dict[str, float]:
        result = evaluate(
            eval_step, eval_view(state), test_ds, batch_size=config.eval_batch_size, mesh=mesh
        )
        if record:
            log({"step": step, "split": "test", **result})
        return result

    test = None
    interrupted = False
    bar = tqdm(
        total=config.num_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not is_main or step >= config.num_steps,
        dynamic_ncols=True,
        file=sys.stdout,
        # Redrawn at most every 10 s when writing to a log file rather than a terminal.
        mininterval=0.1 if sys.stdout.isatty() else 10.0,
    )
    try:
        with _Interrupt(multiprocess=jax.process_count() > 1) as interrupt:
            train_sums, n_sums, t_log = None, 0, time.time()
            while step < config.num_steps:
                state, batch = sparse.before_step(state, step, train_iter)  # may prune
                state, metrics = train_step(state, batch)
                step += 1
                # Summed on the devices and fetched only at log time: a host read here would
                # wait for every step and stall the asynchronous dispatch.
                train_sums = metrics if train_sums is None else add_metrics(train_sums, metrics)
                n_sums += 1
                bar.update(1)
                is_last = step == config.num_steps
                # Read once: a signal that lands later in this step is handled after the next.
                signum = interrupt.stop_signal(step, ckpt)
                saving = bool(is_last or step % config.checkpoint_every == 0 or signum)
                if saving or step % config.log_every == 0:
                    # Checked before every save too, so no checkpoint holds a diverged state.
                    means = {k: float(v) / n_sums for k, v in jax.device_get(train_sums).items()}
                    skipped = skipped_updates(state)
                    _check_finite(means["loss"], step, config, ckpt.directory, skipped)
                if step % config.log_every == 0 or is_last:
                    rate = n_sums * config.batch_size / (time.time() - t_log)
                    lr = float(lr_schedule(step - 1))  # optax counts updates from 0
                    log(
                        {
                            "step": step,
                            "split": "train",
                            **means,
                            **({"skipped_updates": skipped["skipped_updates"]} if skipped else {}),
                            "learning_rate": lr,
                            "examples_per_sec": rate,
                        }
                    )
                    bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.3f}")
                    train_sums, n_sums, t_log = None, 0, time.time()
                evaluated = step % config.eval_every == 0 or step == config.num_steps
                if evaluated:
                    test = run_eval()
                    bar.write(
                        f"step {step}: test loss {test['loss']:.4f}, "
                        f"test accuracy {test['accuracy']:.4f}"
                    )
                ckpt.save(
                    step,
                    state,
                    data_state=train_iter.get_state(),
                    config=json.loads(config.to_json()),
                    metrics={"test_accuracy": test["accuracy"]} if evaluated else None,
                    force=saving,
                )
                if signum is not None:
                    interrupted = True
                    received = (
                        f"Preemption notice ({signal.Signals(signum).name} to one of "
                        f"{jax.process_count()} processes)"
                        if interrupt.multiprocess
                        else f"Received {signal.Signals(signum).name}"
                    )
                    bar.write(
                        f"{received}: saved a checkpoint at step {step}. "
                        "Re-run the same command to resume."
                    )
                    break
    finally:  # also on errors (NaN loss): pending saves finish, files close
        train_iter.close()  # stops the prefetch thread
        sparse.close()
        bar.close()
        ckpt.close()
        if tensorboard is not None:
            tensorboard.close()
    if test is None and not interrupted:  # resumed a finished run: evaluate, log nothing new
        print(f"The run had already reached num_steps={config.num_steps}.", flush=True)
        test = run_eval(record=False)
    if is_main:
        note = f" (label smoothing {config.label_smoothing})" if config.label_smoothing else ""
        plot_curves(
            metrics_path, os.path.join(workdir, "curves.png"), title=config.model, train_note=note
        )
    summary = {
        "test_accuracy": None if test is None else test["accuracy"],
        "test_loss": None if test is None else test["loss"],
        "steps": step,
        "wall_time": time.time() - start,
        "workdir": workdir,
        "resumed_from": resumed_from,
        "interrupted": interrupted,
    }
    if interrupted:
        summary["signal"] = signum
    elif pruning.enabled(config):
        summary.update(pruning.final_cost(config, model, state, input_shape))
    return summary


def default_workdir(config_path: str) -> str:
    """``runs/<config file stem>[_<arg>]``: re-running the same command resumes."""
    path, _, arg = config_path.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(
        "runs", stem + (f"_{arg}" if arg else "").replace("=", "").replace(",", "_")
    )


def cli() -> None:
    """Entry point of ``python -m experiments.train``."""
    config_flag = config_utils.define_config_flag(config_utils.DEFAULT_CONFIG)
    workdir_flag = flags.DEFINE_string(
        "workdir", None, "Output directory (default: runs/<config file name>)."
    )

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        # A config error is one line and exit status 2, before any directory is written.
        config = config_utils.checked_config(config_flag, config_utils.validate)
        workdir = workdir_flag.value or default_workdir(flags.FLAGS["config"].config_filename)
        try:
            summary = train_and_evaluate(config, workdir)
        except CheckpointDiskFullError as e:  # one line, not Orbax's traceback
            sys.exit(f"Error: {e}")
        acc = summary["test_accuracy"]
        acc_text = "n/a" if acc is None else f"{acc:.4f}"
        status = "Interrupted" if summary["interrupted"] else "Done"
        print(
            f"{status}: test accuracy {acc_text} | steps {summary['steps']} | "
            f"wall time {summary['wall_time']:.1f}s | workdir {workdir}",
            flush=True,
        )
        if summary["interrupted"]:
            sys.exit(128 + summary["signal"])

    app.run(main, flags_parser=config_utils.parse_flags)


if __name__ == "__main__":
    cli()
