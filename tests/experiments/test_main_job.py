"""README command 1's job, exactly as a new user runs it, reaches >= 95% on digits."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_default_main_job_reaches_95_percent(tmp_path):
    env = dict(os.environ)
    # A user's machine has one CPU device, not the 8 simulated ones of the tests.
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", ""
    )
    workdir = tmp_path / "main_job"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={workdir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"Done: test accuracy (\d\.\d+) \| steps 300 \| wall time", result.stdout)
    assert match, result.stdout[-2000:]
    assert float(match.group(1)) >= 0.95
    assert "train: 100%" in result.stdout  # the progress bar
    for name in ("metrics.jsonl", "curves.png", "config.json"):
        assert (workdir / name).stat().st_size > 0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["100", "200", "300"]
