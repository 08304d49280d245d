"""The main job end to end: outputs, resume, preemption, and config errors."""

import os
import random
import signal
import subprocess
import sys
import time

import chex
import pytest

from archjax import models, parallel
from archjax.checkpoint import Checkpointer
from archjax.train import abstract_train_state
from experiments import config_utils
from experiments import train as main_job
from experiments.plotting import read_metrics
from tests.conftest import TINY_MODEL_KWARGS, TINY_RUN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(**overrides):
    config = config_utils.load_config()
    config.update({**TINY_RUN, **overrides})
    config.model_kwargs.update(TINY_MODEL_KWARGS)
    return config


def _overrides_as_flags(**overrides):
    args = [f"--config.{k}={v}" for k, v in {**TINY_RUN, **overrides}.items()]
    return [*args, *(f"--config.model_kwargs.{k}={v}" for k, v in TINY_MODEL_KWARGS.items())]


def _final_state(workdir, config):
    """Restores the latest checkpoint of a run (on one device)."""
    train_ds_shape = (1, config.image_size, config.image_size, 1)
    model = models.create(config.model, num_classes=10, **config.model_kwargs.to_dict())
    tx = main_job.create_optimizer(config)
    # On this process's first device, whatever devices (or processes) saved it.
    mesh = parallel.make_mesh(1)
    target = abstract_train_state(model, tx, input_shape=train_ds_shape, mesh=mesh)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        return ckpt.restore(target)[0], ckpt.all_steps()


def test_run_writes_outputs_and_resumes(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    summary = main_job.train_and_evaluate(tiny_config(), workdir)
    assert summary["steps"] == 12 and summary["resumed_from"] is None
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    for name in ("metrics.jsonl", "curves.png", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "train"] == [3, 6, 9, 12]
    assert [r["step"] for r in records if r["split"] == "test"] == [6, 12]
    assert _final_state(workdir, tiny_config())[1] == [4, 8, 12]

    # Same command again: resumes from the last checkpoint, says so, trains no more.
    again = main_job.train_and_evaluate(tiny_config(), workdir)
    assert again["resumed_from"] == 12 and again["steps"] == 12
    assert "Resuming from step 12" in capsys.readouterr().out
    assert again["test_accuracy"] == pytest.approx(summary["test_accuracy"])

    # A longer schedule is a resumable change; the model is not.
    longer = main_job.train_and_evaluate(tiny_config(num_steps=16), workdir)
    assert longer["resumed_from"] == 12 and longer["steps"] == 16
    with pytest.raises(ValueError, match=r"different config \(model: 'resnet8' -> 'resnet20'\)"):
        main_job.train_and_evaluate(tiny_config(model="resnet20"), workdir)


def _run_main(workdir, *extra, wait=True):
    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *extra]
    if wait:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


# Slow enough per step that a signal lands mid-run (full width, 16 px).
PREEMPT = dict(num_steps=150, image_size=16, checkpoint_every=25, eval_every=150)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final state of a run of PREEMPT that nobody interrupted."""
    config = tiny_config(**PREEMPT)
    reference = str(tmp_path_factory.mktemp("reference"))
    main_job.train_and_evaluate(config, reference)
    return _final_state(reference, config)[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_preemption_then_rerun_equals_uninterrupted_run(tmp_path, signum, uninterrupted, capsys):
    """SIGTERM/SIGINT save a checkpoint at the current step and exit; SIGKILL (kill -9,
    at a random moment after the first checkpoint) loses the steps since the last one.
    Either way the re-run continues and ends bitwise equal to an uninterrupted run
    (same seed; the data iterator position is part of the checkpoint). The interrupted
    run is a real process; the re-run runs in this one, like the uninterrupted run, so
    it reuses their compiled programs."""
    flags = _overrides_as_flags(**PREEMPT)
    workdir = str(tmp_path / "preempted")
    proc = _run_main(workdir, *flags, wait=False)
    first_ckpt = os.path.join(workdir, "checkpoints", "25")
    deadline = time.time() + 300
    while not os.path.isdir(first_ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    # kill -9 at a random step soon after the first checkpoint (maybe mid-save). The rest
    # of the run can take under 2 s on a quiet machine with warm compilation caches, so
    # the delay stays well below that: the signal must reach a running job.
    delay = random.uniform(0.0, 0.3) if signum == signal.SIGKILL else 0.0
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the signal; make PREEMPT longer"
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=300)
    config = tiny_config(**PREEMPT)
    _, steps = _final_state(workdir, config)
    stopped_at = steps[-1]
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, out
        assert 25 <= stopped_at < 150, (steps, delay)
    else:
        assert proc.returncode == 128 + signum, out
        # Saved at the step boundary after the signal, then exited: that is the last step.
        name = signal.Signals(signum).name
        assert f"Received {name}: saved a checkpoint at step {stopped_at}." in out, out
        assert "Interrupted: test accuracy n/a" in out
        assert 25 <= stopped_at < 150, steps

    capsys.readouterr()
    rerun = main_job.train_and_evaluate(config, workdir)
    assert rerun["resumed_from"] == stopped_at and rerun["steps"] == 150, rerun
    assert f"Resuming from step {stopped_at}" in capsys.readouterr().out

    resumed_state, _ = _final_state(workdir, config)
    chex.assert_trees_all_equal(resumed_state, uninterrupted)  # bitwise, delay={delay}


def test_refuses_a_foreign_non_empty_workdir(tmp_path):
    (tmp_path / "thesis.tex").write_text("not archjax's")
    with pytest.raises(ValueError, match="Refusing to write into .* not an archjax directory"):
        main_job.train_and_evaluate(tiny_config(), str(tmp_path))
    assert os.listdir(tmp_path) == ["thesis.tex"]


def test_cli_unknown_config_key_names_it(tmp_path):
    result = _run_main(str(tmp_path), "--config.num_step=5")
    assert result.returncode == 2
    assert "Unknown config key 'num_step'" in result.stderr
    assert "Did you mean 'num_steps'?" in result.stderr and "batch_size" in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            dict(model="resnet21"),
            r"config.model: Unknown model 'resnet21'\. Did you mean .*'resnet20'",
        ),
        (dict(dataset="digitz"), r"Unknown dataset 'digitz' \(config.dataset\).*digits.*shapes"),
        (dict(optimizer="adamm"), r"Unknown optimizer 'adamm'.*adamw, lamb, lars, novograd, sgd"),
        (dict(num_steps=0), r"config.num_steps must be a positive integer"),
        (
            dict(batch_size=12, num_devices=None),
            r"Batch size 12 is not divisible by the number of devices .* \(8\)",
        ),
    ],
)
def test_bad_config_values_name_the_problem(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        main_job.train_and_evaluate(tiny_config(**overrides), str(tmp_path))


def test_unknown_key_in_config_dict(tmp_path):
    config = tiny_config()
    config.lerning_rate = 0.1  # a typo in a config file
    with pytest.raises(ValueError, match=r"Unknown config key 'lerning_rate'.*'learning_rate'"):
        main_job.train_and_evaluate(config, str(tmp_path))


def test_unknown_model_knob_names_allowed(tmp_path):
    config = tiny_config()
    config.model_kwargs.widht = 2.0
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['widht'\].*width_multiplier"):
        main_job.train_and_evaluate(config, str(tmp_path))


def test_diverging_loss_raises_with_step(tmp_path):
    config = tiny_config(learning_rate=1e30, warmup_steps=0, log_every=1, label_smoothing=0.0)
    with pytest.raises(FloatingPointError, match=r"Training loss is (nan|inf) at step \d+"):
        main_job.train_and_evaluate(config, str(tmp_path))


def test_default_workdir_is_stable():
    assert main_job.default_workdir("experiments/configs/default.py") == "runs/default"
    assert main_job.default_workdir("a/b.py:model=resnet32,num_steps=9") == (
        "runs/b_modelresnet32_num_steps9"
    )
