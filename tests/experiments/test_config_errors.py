"""Every invalid config value is one error that names its key, before anything is written.

Property-based (hypothesis) over single overrides of the default config, through the
same path as a run: ``train_and_evaluate`` validates before it creates the workdir. Two
real command lines check that the same errors reach the user as one ``FATAL`` line with
exit status 2.
"""

import dataclasses
import math
import os
import string
import subprocess
import sys
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archjax import models, optim
from experiments import config_utils
from experiments import train as main_job

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_RESNET20_KNOBS = {f.name for f in dataclasses.fields(models.create("resnet20"))}
_NAMES = st.text(alphabet=string.ascii_lowercase + string.digits + "_", min_size=1, max_size=12)
_BAD_FLOATS = st.one_of(
    st.floats(max_value=0.0, exclude_max=True, allow_nan=False), st.just(math.nan)
)
# key -> values that key must refuse (as config_flags would type them).
_INVALID = {
    "learning_rate": st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf])),
    "batch_size": st.integers(max_value=0),
    "num_steps": st.integers(max_value=0),
    "eval_batch_size": st.integers(max_value=0),
    "image_size": st.integers(max_value=0),
    "microbatches": st.one_of(
        st.integers(max_value=0), st.integers(3, 127).filter(lambda n: 128 % n)
    ),
    "model": _NAMES.filter(lambda s: s not in models.list_models()),
    "optimizer": _NAMES.filter(lambda s: s not in optim.list_optimizers()),
    "dataset": _NAMES.filter(lambda s: s not in ("digits", "shapes")),
    "schedule": _NAMES.filter(lambda s: s not in optim.list_schedules()),
    "weight_decay": _BAD_FLOATS,
    "sam_rho": _BAD_FLOATS,
    "ema_decay": st.one_of(_BAD_FLOATS, st.floats(min_value=1.0, allow_nan=False)),
    "label_smoothing": st.one_of(_BAD_FLOATS, st.floats(min_value=1.0, allow_nan=False)),
    "warmup_steps": st.integers(max_value=-1),
    "model_kwargs": _NAMES.filter(lambda s: s not in _RESNET20_KNOBS),
    "dataset_kwargs": _NAMES,
}


def _config(key, value):
    config = config_utils.load_config()
    if key in ("model_kwargs", "dataset_kwargs"):  # an unknown knob / option
        config[key][value] = 1
    else:
        config[key] = value
    return config


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(_INVALID)).flatmap(lambda k: st.tuples(st.just(k), _INVALID[k])))
def test_invalid_value_names_its_key_and_writes_nothing(tmp_path_factory, key_value):
    key, value = key_value
    config = _config(key, value)
    workdir = tmp_path_factory.mktemp("run") / "workdir"
    with pytest.raises(ValueError) as error:
        main_job.train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert f"config.{key}" in message and "\n" not in message, message
    frames = traceback.extract_tb(error.value.__traceback__)
    assert not any(f"{os.sep}jax{os.sep}" in frame.filename for frame in frames), frames
    assert not workdir.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--config.model_kwargs.widht=2.0"],
            "config.model_kwargs: Model 'resnet20' got unknown option(s) ['widht']",
        ),
        (
            ["--config.dataset=tfds:mnist", "--config.data_dir={tmp}/nowhere"],
            "tfds:mnist is not prepared: data_dir {tmp}/nowhere does not exist. "
            "Prepare it on a machine with network access with `tfds build mnist",
        ),
    ],
)
def test_cli_value_errors_are_one_line_with_status_2(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
         *(a.format(tmp=tmp_path) for a in args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL Flags parsing error: "), result.stderr
    assert message.format(tmp=tmp_path) in lines[0]
    assert not workdir.exists() and not (tmp_path / "nowhere").exists()
