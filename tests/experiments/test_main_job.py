"""README command 1's job, exactly as a new user runs it, reaches >= 95% on digits."""

import glob
import json
import os
import re
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

from tests.conftest import TEST_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_scalars(path: str) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from a TensorBoard event file (TFRecord framing)."""
    scalars: dict[str, dict[int, float]] = {}
    with open(path, "rb") as f:
        while header := f.read(12):  # uint64 length, uint32 CRC of the length
            (length,) = struct.unpack("<Q", header[:8])
            event = event_pb2.Event.FromString(f.read(length))
            f.read(4)  # CRC of the data
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_default_main_job_reaches_95_percent(tmp_path):
    env = dict(os.environ)
    # A user's machine has one CPU device, not the 8 simulated ones of the tests.
    # Nor the tests' fast-compile flags (conftest.py): 300 steps run faster without them.
    flags = env.get("XLA_FLAGS", "").split()
    drop = {"--xla_force_host_platform_device_count=8", *TEST_XLA_FLAGS}
    env["XLA_FLAGS"] = " ".join(f for f in flags if f not in drop)
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

    # TensorBoard: one event file next to metrics.jsonl, with the same scalars.
    (event_file,) = glob.glob(str(workdir / "events.out.tfevents.*"))
    scalars = read_scalars(event_file)
    tags = {"loss", "accuracy", "learning_rate", "examples_per_sec"}
    assert {f"train/{t}" for t in tags} | {"test/loss", "test/accuracy"} <= set(scalars)
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    for r in records:
        for key in tags & set(r):
            assert abs(scalars[f"{r['split']}/{key}"][r["step"]] - r[key]) <= 1e-6 * abs(r[key])
    assert scalars["test/accuracy"][300] >= 0.95
    # Warmup then cosine decay to 0: the logged learning rate follows the schedule.
    lr = scalars["train/learning_rate"]
    assert lr[25] == max(lr.values()) and lr[300] < 1e-3 * lr[25]
