r"""What the persistent compilation cache saves a study: 16 trials that share shapes.

The study (defined here, so the engine's CLI runs it as any other study) is 16 main-job
trials of one tiny model that differ only in the learning rate: the same programs in
every trial. Its worker runs the trials one after another in one process, and each
``train_and_evaluate`` builds its jitted functions anew, so without the persistent
cache every trial compiles them again. Each run below is a fresh process (the engine's
CLI, a new workdir) with the engine's ``--compilation-cache-dir`` and the main job's
``compilation_cache_dir`` set to

- ``off``: "" (no persistent cache);
- ``cold``: an empty cache directory (the first trial writes the entries);
- ``warm``: the directory ``cold`` filled (a re-run, or a second study of the same shapes).

Runs alternate off / cold / warm for ``--rounds`` rounds (a new cache directory per
round); the script prints wall time per run, per trial, and the median ratios.

  python -m benchmarks.compile_cache [--rounds=2] [--trials=16]

Results go to docs/benchmarks.md with the machine load (`uptime`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from archjax import studies

CACHE_ENV = "ARCHJAX_BENCH_CACHE_DIR"  # the cache directory of this run ("" = off)
TRIALS_ENV = "ARCHJAX_BENCH_TRIALS"


def define(quick: bool = False) -> studies.Study:
    from experiments.studies import common

    n = int(os.environ.get(TRIALS_ENV, "16"))
    return studies.Study(
        name="compile_cache_bench",
        configs=[{"learning_rate": 0.05 + 0.01 * i} for i in range(n)],
        trial=common.train_trial,
        check=common.check_train_config,
        fixed={
            "model": "resnet8",
            "model_kwargs.width_multiplier": 0.25,
            "image_size": 8,
            "batch_size": 32,
            "num_steps": 10,
            "warmup_steps": 1,
            "log_every": 10,
            "eval_every": 10,
            "checkpoint_every": 10,
            "keep_checkpoints": 1,
            "num_devices": 1,
            "compilation_cache_dir": os.environ.get(CACHE_ENV, ""),
        },
        objective="test_loss",
    )


def _run(workdir: str, cache_dir: str, trials: int) -> float:
    env = {**os.environ, CACHE_ENV: cache_dir, TRIALS_ENV: str(trials)}
    cmd = [sys.executable, "-m", "archjax.studies", "run", __file__, "--workdir", workdir,
           "--compilation-cache-dir", cache_dir]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {load:.1f}", flush=True)
    walls: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            cache = os.path.join(root, f"cache{r}")
            for mode in ("off", "cold", "warm"):
                wall = _run(os.path.join(root, f"{mode}{r}"), "" if mode == "off" else cache,
                            args.trials)  # fmt: skip
                walls[mode].append(wall)
                entries = len(os.listdir(cache)) if os.path.isdir(cache) else 0
                print(f"round {r + 1} {mode:>4}: {wall:6.1f} s for {args.trials} trials "
                      f"({wall / args.trials:5.2f} s/trial; cache entries {entries})",
                      flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in walls.items()}
    off, cold, warm = med["off"], med["cold"], med["warm"]
    print(f"median: off {off:.1f} s, cold {cold:.1f} s, warm {warm:.1f} s; off / cold "
          f"{off / cold:.2f}x, off / warm {off / warm:.2f}x; load at the end "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
