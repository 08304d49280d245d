"""The README's commands and example stay true."""

import os
import pathlib
import re

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = pathlib.Path(REPO, "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_uses_them():
    commands = [block.strip() for block in _blocks("bash")]
    assert commands == [
        "pip install -e '.[dev]' && python -m experiments.train",
        "python -m pytest",
    ]
    ci = pathlib.Path(REPO, ".ci", "run").read_text()
    assert "pip install -e '.[dev]'" in ci
    assert "\npython -m pytest\n" in ci


def test_readme_library_example_runs():
    (example,) = _blocks("python")
    assert len(example.strip().splitlines()) <= 12
    # Same code with 3 steps instead of 300 so that the suite stays fast.
    code = example.replace("300", "3")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert int(namespace["state"].step) == 3
    assert np.isfinite(float(namespace["metrics"]["loss"]))
