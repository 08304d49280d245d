"""Every config in experiments/configs/ loads, validates and builds its model (no training)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from archjax import models
from experiments import config_utils
from experiments import train as main_job

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "experiments" / "configs").glob("*.py") if p.stem != "__init__")
FAMILY_CONFIGS = [p for p in CONFIGS if p.stem != "default"]


def test_configs_are_found():
    assert {"default", "resnet", "vit"} <= {p.stem for p in CONFIGS}, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_validates_and_builds(path: pathlib.Path):
    config = config_utils.load_config(str(path))
    config_utils.validate(config)
    main_job.create_optimizer(config)
    # The model accepts the config's knobs at the config's image size (shapes only).
    kw = main_job.model_kwargs(config, num_classes=10)
    model = models.create(config.model, **kw)
    x = jnp.zeros((1, config.image_size, config.image_size, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (1, 10)


@pytest.mark.parametrize("path", FAMILY_CONFIGS, ids=[p.stem for p in FAMILY_CONFIGS])
def test_family_config_documents_its_command(path: pathlib.Path):
    """The docstring holds the command that runs it, and the README points to it."""
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command = f"python -m experiments.train --config=experiments/configs/{path.name}"
    assert command in module.__doc__
    assert f"experiments/configs/{path.name}" in (REPO / "README.md").read_text()


def test_vit_model_image_size_follows_image_size():
    """``model_kwargs.image_size`` is a reference to ``image_size``: one override moves both."""
    config = config_utils.load_config(str(REPO / "experiments" / "configs" / "vit.py"))
    config.image_size = 32
    assert config.model_kwargs.to_dict()["image_size"] == 32


@pytest.mark.parametrize("path", FAMILY_CONFIGS, ids=[p.stem for p in FAMILY_CONFIGS])
def test_family_config_refuses_an_argument(path: pathlib.Path):
    with pytest.raises(ValueError, match=f"{path.name} takes no argument, got 'lr=1'"):
        config_utils.load_config(f"{path}:lr=1")
