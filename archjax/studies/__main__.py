r"""Command line of the study engine.

  python -m archjax.studies run experiments/studies/toy_scaling.py --quick --workers 2
  python -m archjax.studies status experiments/studies/toy_scaling.py --quick
  python -m archjax.studies fit experiments/studies/toy_scaling.py --quick

Commands: ``run`` (create + enqueue missing + work), ``init`` (create + enqueue,
once per cluster), ``work`` (one worker), ``status``, ``export`` (CSV), ``fit``,
``plot``. The store is ``--storage URL``, else ``$ARCHJAX_STORAGE``, else the file
named by ``--storage-file``, else SQLite in ``<workdir>/study.db``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from archjax.studies import definition, runner
from archjax.studies import store as S

COMMANDS = ("run", "init", "work", "status", "export", "fit", "plot")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m archjax.studies", description="Study engine.")
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("study", help="module[:function] or file.py[:function] defining the study")
    p.add_argument("--quick", action="store_true", help="the study's toy budget")
    p.add_argument("--workdir", help="study directory (default runs/studies/<name>)")
    p.add_argument("--storage", help=f"SQLAlchemy URL (default ${S.ENV_STORAGE} or SQLite)")
    p.add_argument("--storage-file", help="a file holding the storage URL (keeps it out of ps)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (run)")
    p.add_argument("--device-per-worker", action="store_true",
                   help="worker i sees only GPU i (sets CUDA_VISIBLE_DEVICES)")  # fmt: skip
    p.add_argument("--retry-failed", action="store_true", help="re-queue failed configs")
    p.add_argument("--slice", action="store_true",
                   help="one worker over all jax.distributed processes (work)")  # fmt: skip
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between heartbeats")
    p.add_argument("--grace", type=int, default=60, help="seconds until a silent trial is stale")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between queue looks")
    p.add_argument("--compilation-cache-dir", default=None,
                   help="JAX's persistent compilation cache of the trials (default: "
                        "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/archjax; '' = off)")  # fmt: skip
    p.add_argument("--out", help="output file (export) or directory (plot)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def storage_url(args, workdir: str) -> str:
    if args.storage:
        return args.storage
    if os.environ.get(S.ENV_STORAGE):
        return os.environ[S.ENV_STORAGE]
    if args.storage_file:
        try:
            with open(args.storage_file) as f:
                return f.read().strip()
        except OSError as e:
            raise S.StudyError(
                f"Cannot read --storage-file {args.storage_file}: {e.strerror}"
            ) from None
    return S.sqlite_url(workdir)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = None
    try:
        if args.workers < 1:
            raise S.StudyError(f"--workers must be at least 1, got {args.workers}.")
        study = definition.load(args.study, quick=args.quick)
        workdir = args.workdir or os.path.join("runs", "studies", study.name)
        url = storage_url(args, workdir)
        return _command(args, study, workdir, url)
    except S.StudyError as e:
        message = str(e) if url is None else S.scrub(str(e), url)
        print(f"error: {message}", file=sys.stderr)
        return 2


def _open(args, url: str):
    return S.open_storage(url, heartbeat_interval=args.heartbeat, grace_period=args.grace)


def _compilation_cache(args) -> None:
    """Turns on JAX's persistent compilation cache in a worker (:mod:`archjax.compile_cache`).

    Trials of one shape then compile once per machine, not once per trial and worker;
    a study whose trials do not use JAX pays one import. Main-job trials set it again
    from their config (``compilation_cache_dir``), which by default keeps this directory.
    """
    if importlib.util.find_spec("jax") is None:
        return
    from archjax import compile_cache

    compile_cache.enable_compilation_cache(args.compilation_cache_dir)


def _command(args, study: definition.Study, workdir: str, url: str) -> int:
    masked = S.mask_url(url)
    if args.command == "work":
        _compilation_cache(args)
        if study.setup is not None:
            study.setup()
        main_process = True
        if args.slice:
            import jax

            main_process = jax.process_index() == 0
        if args.slice:  # opened by process 0 inside the loop that reports failures
            storage = (lambda: _open(args, url)) if main_process else None
        else:
            storage = _open(args, url)
        ran = runner.work(study, storage, workdir, poll_interval=args.poll,
                          show_progress=not args.no_progress and main_process,
                          slice_wide=args.slice)  # fmt: skip
        print(f"{study.name}: this worker ran {ran} trials.", flush=True)
        return 0
    storage = _open(args, url)
    if args.command in ("run", "init"):
        new = runner.init(study, storage, retry_failed=args.retry_failed)
        done, total = runner.progress(study, runner.load(study, storage))
        print(f"{study.name}: {total} configs, {done} finished, {len(new)} newly queued "
              f"(store {masked}).", flush=True)  # fmt: skip
        if args.command == "init":
            return 0
        if args.workers == 1:
            _compilation_cache(args)
            if study.setup is not None:
                study.setup()
            runner.work(study, storage, workdir, poll_interval=args.poll,
                        show_progress=not args.no_progress)  # fmt: skip
        elif _spawn_workers(args, study, workdir, url):
            return 1
        return _status(study, storage)
    opt = runner.load(study, storage)
    if args.command == "status":
        return _status(study, storage)
    rows = S.rows(opt)
    if args.command == "export":
        path = S.export_csv(rows, args.out or os.path.join(workdir, "trials.csv"))
        print(f"Wrote {len(rows)} trials to {path}")
    elif args.command == "fit":
        if study.fit is None:
            raise S.StudyError(f"Study {study.name!r} defines no fit.")
        result = study.fit(rows)
        path = os.path.join(workdir, "fit.json")
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=float)
        print(json.dumps(result, indent=1, default=float))
    elif args.command == "plot":
        if study.plot is None:
            raise S.StudyError(f"Study {study.name!r} defines no plot.")
        for path in study.plot(rows, S.curves(opt), args.out or os.path.join(workdir, "plots")):
            print(f"Wrote {path}")
    return 0


def _status(study: definition.Study, storage) -> int:
    opt = runner.load(study, storage)
    done, total = runner.progress(study, opt)
    counts = S.counts(opt)
    print(f"{study.name}: {done}/{total} configs finished; trials "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))  # fmt: skip
    for row in S.rows(opt):
        if row["state"] == "FAIL" and row["error"]:
            last = row["error"].strip().splitlines()[-1]
            print(f"  trial {row['trial']} FAIL {row['key']}: {last}")
    return 0


def _spawn_workers(args, study, workdir: str, url: str) -> int:
    """Runs ``args.workers`` local ``work`` processes; returns how many failed.

    The URL travels in the environment, never on a command line (``ps`` shows those).
    """
    cmd = [sys.executable, "-m", "archjax.studies", "work", args.study, "--workdir", workdir,
           "--heartbeat", str(args.heartbeat), "--grace", str(args.grace),
           "--poll", str(args.poll), "--no-progress"]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    if args.compilation_cache_dir is not None:
        cmd += ["--compilation-cache-dir", args.compilation_cache_dir]
    procs = []
    for i in range(args.workers):
        env = dict(os.environ, **{S.ENV_STORAGE: url})
        if args.device_per_worker:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        procs.append(subprocess.Popen(cmd, env=env))
    opt = runner.load(study, S.open_storage(url, heartbeat_interval=args.heartbeat,
                                            grace_period=args.grace))  # fmt: skip
    bar = None if args.no_progress else runner._bar(study, opt, True)
    while any(p.poll() is None for p in procs):
        time.sleep(1.0)
        runner._refresh(bar, study, opt)
    runner._refresh(bar, study, opt)
    if bar is not None:
        bar.close()
    return sum(p.returncode != 0 for p in procs)


if __name__ == "__main__":
    sys.exit(main())
