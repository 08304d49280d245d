r"""Engine overhead per trial: claim, heartbeat, record, against a trial of fixed length.

One in-process worker runs ``--trials`` trials that each sleep ``--trial-seconds``
(heartbeats every second, the most frequent setting); the overhead per trial is
``(worker wall time - trials * trial_seconds) / trials``, reported also as a
fraction of a 10-second trial. SQLite always; PostgreSQL when ``--postgres URL``
(or ``$ARCHJAX_TEST_POSTGRES_URL``) names a server.

  python -m benchmarks.studies --trials 20 --trial-seconds 0.5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

from archjax import studies
from archjax.studies import runner


def sleep_trial(config, trial):
    time.sleep(config["seconds"])
    return {"loss": float(config["i"])}


def measure(url: str, trials: int, seconds: float) -> float:
    """Overhead per trial in seconds (worker wall time minus the trials' own time)."""
    study = studies.Study(
        name=f"bench_{uuid.uuid4().hex[:8]}",
        configs=studies.grid(i=list(range(trials))),
        trial=sleep_trial,
        fixed={"seconds": seconds},
    )
    storage = studies.open_storage(url, heartbeat_interval=1, grace_period=5)
    with tempfile.TemporaryDirectory() as workdir:
        studies.init(study, storage)
        start = time.perf_counter()
        ran = runner.work(study, storage, workdir, show_progress=False)
        wall = time.perf_counter() - start
    assert ran == trials
    return (wall - trials * seconds) / trials


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--trial-seconds", type=float, default=0.5)
    p.add_argument("--postgres", default=os.environ.get("ARCHJAX_TEST_POSTGRES_URL"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        backends = [("sqlite", studies.sqlite_url(d))]
        if args.postgres:
            backends.append(("postgresql", args.postgres))
        print(f"{args.trials} trials of {args.trial_seconds} s, one worker, heartbeat 1 s")
        print("| store | overhead per trial (ms) | share of a 10 s trial |")
        print("|---|---|---|")
        for name, url in backends:
            overhead = measure(url, args.trials, args.trial_seconds)
            print(f"| {name} | {overhead * 1e3:.1f} | {overhead / 10:.2%} |")


if __name__ == "__main__":
    main()
