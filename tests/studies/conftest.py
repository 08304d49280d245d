"""Shared by the study tests: stores (SQLite, and PostgreSQL when CI started one)."""

import contextlib
import os
import subprocess
import sys
import uuid

import pytest
import sqlalchemy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = "tests/studies/toy_study.py"
ENV_POSTGRES = "ARCHJAX_TEST_POSTGRES_URL"  # set by .ci/run around its throw-away server


def postgres_database() -> str:
    """A fresh database on the CI server; its URL (the tests skip without the server)."""
    url = os.environ.get(ENV_POSTGRES)
    if not url:
        pytest.skip(f"{ENV_POSTGRES} is unset: .ci/run starts a PostgreSQL server for this")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with admin(url) as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    return sqlalchemy.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def admin(url: str):
    """An autocommit connection to ``url`` through psycopg2 (the ``postgres`` extra)."""
    parsed = sqlalchemy.engine.make_url(url).set(drivername="postgresql+psycopg2")
    engine = sqlalchemy.create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """A store URL of each backend (PostgreSQL only where .ci/run started a server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    return postgres_database()


def cli(*args: str, storage: str | None = None, timeout: float = 120, check=True, **popen):
    """Runs ``python -m archjax.studies ...`` from the repo; the URL goes in the environment."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("ARCHJAX_STORAGE", None)
    if storage:
        env["ARCHJAX_STORAGE"] = storage
    result = subprocess.run(
        [sys.executable, "-m", "archjax.studies", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def worker(*args: str, storage: str | None = None) -> subprocess.Popen:
    """A ``work`` process, started and left running."""
    env = dict(os.environ, PYTHONPATH=REPO)
    if storage:
        env["ARCHJAX_STORAGE"] = storage
    return subprocess.Popen(
        [sys.executable, "-m", "archjax.studies", "work", *args, "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_counts(workdir) -> dict[str, int]:
    """How many times each config key really ran (from the toy study's runs.log)."""
    counts: dict[str, int] = {}
    with open(os.path.join(workdir, "runs.log")) as f:
        for line in f:
            key = line.split()[0]
            counts[key] = counts.get(key, 0) + 1
    return counts
