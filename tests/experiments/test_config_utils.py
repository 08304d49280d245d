"""Configs through ml_collections: declared ``:arg`` arguments, key checks, one-line CLI errors."""

import os
import subprocess
import sys

import ml_collections
import pytest

from experiments import config_utils
from experiments.configs import default
from experiments.quant.configs import qat as qat_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_parse_arg_types_values_by_their_defaults():
    args = config_utils.parse_arg(
        "n=3,rate=0.5,flag=true,name=x", n=1, rate=0.1, flag=False, name=""
    )
    assert args.to_dict() == {"n": 3, "rate": 0.5, "flag": True, "name": "x"}
    assert config_utils.parse_arg(None, n=1).n == 1
    with pytest.raises(ValueError, match=r"Bad config argument 'n=x': n takes a int"):
        config_utils.parse_arg("n=x", n=1)


def test_config_files_accept_only_their_declared_arguments():
    assert default.get_config("model=resnet32").model == "resnet32"
    assert qat_config.get_config("scheme=w4a4").quant.scheme == "w4a4"
    with pytest.raises(ValueError, match=r"Bad config argument 'num_steps=5'.*are scheme"):
        qat_config.get_config("scheme=w4a4,num_steps=5")
    with pytest.raises(ValueError, match=r"Bad config argument 'batch_size=8'.*are model"):
        default.get_config("batch_size=8")


def test_check_keys_is_recursive_except_free_form_dicts():
    reference = default.get_config()
    config = default.get_config()
    config.model_kwargs.anything = 1  # free-form: models.create checks it
    config.dataset_kwargs.num_examples = 10
    config_utils.check_keys(config, reference)
    config.mesh.fsdpp = 2
    with pytest.raises(ValueError, match=r"Unknown config key 'fsdpp' \(under config.mesh\)"):
        config_utils.check_keys(config, reference)
    missing = default.get_config()
    del missing["distributed"]["auto_detect"]
    with pytest.raises(ValueError, match=r"missing key 'auto_detect' \(under config.distributed"):
        config_utils.check_keys(missing, reference)
    with pytest.raises(ValueError, match=r"config.mesh must be a dict"):
        config_utils.check_keys(ml_collections.ConfigDict({**reference, "mesh": 3}), reference)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.mesh.fsdpp=2"], "Unknown config key 'fsdpp' (under config.mesh). Did you mean"),
        (["--config.foo.bar=1"], "Unknown config key 'foo' in a --config.* flag."),
        (["--config=experiments/configs/default.py:num_steps=3"], "Bad config argument"),
        (["--config.model=resnet21"], "config.model: Unknown model 'resnet21'. Did you mean"),
    ],
)
def test_cli_config_errors_are_one_line_with_status_2(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL Flags parsing error: "), result.stderr
    assert message in lines[0]
    assert not workdir.exists()
