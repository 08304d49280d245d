"""Bad input to the CLI: one clear error line, nothing changed in the store, no password."""

import pytest
import sqlalchemy

from archjax import studies
from archjax.studies import runner
from archjax.studies.__main__ import main

from .conftest import TOY, admin, postgres_database

PASSWORD = "pa55-w0rd-never-shown"


def _error(capsys, argv):
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: ") and out.err.count("\n") == 1, out
    return out.err


def test_bad_input_changes_nothing(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    url = f"sqlite:///{workdir}/study.db"
    assert main(["run", f"{TOY}:grid24", "--workdir", workdir, "--no-progress"]) == 0
    storage = studies.open_storage(url)
    opt = runner.load(studies.load(f"{TOY}:grid24"), storage)
    before = studies.rows(opt)
    capsys.readouterr()

    assert "Unknown study 'tests/studies/nope.py'" in _error(
        capsys, ["run", "tests/studies/nope.py"]
    )
    assert "no module 'no_such'" in _error(capsys, ["status", "no_such.module"])
    err = _error(capsys, ["run", f"{TOY}:unknown_key", "--workdir", workdir])
    assert "is invalid" in err and "unknown config keys ['lr']" in err
    err = _error(capsys, ["run", f"{TOY}:other_function", "--workdir", workdir])
    assert "already exists in this store with trial_function" in err and "quadratic" in err
    err = _error(capsys, ["init", f"{TOY}:other_fixed", "--workdir", workdir])
    assert "with fixed" in err and "step_time" in err
    assert studies.rows(opt) == before


def test_unreachable_storage_hides_password(capsys):
    url = f"postgresql://alice:{PASSWORD}@127.0.0.1:9/studies"
    for command in ("run", "status"):
        err = _error(capsys, [command, f"{TOY}:grid24", "--storage", url])
        assert "Cannot open storage postgresql://alice:***@127.0.0.1:9/studies" in err
        assert PASSWORD not in err
    assert studies.mask_url("postgresql://bob:x%40y@h/db") == "postgresql://bob:***@h/db"
    assert studies.mask_url("not a url://u:secret@h") == "not a url://u:***@h"


def test_password_absent_from_outputs_and_store(tmp_path, capsys, caplog, monkeypatch):
    """A real PostgreSQL run with a password in the URL: absent from output and store."""
    url = sqlalchemy.engine.make_url(postgres_database())
    user = f"u_{url.database}"  # the database name is fresh for each test
    with admin(url.render_as_string(hide_password=False)) as conn:
        conn.exec_driver_sql(f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    secret = url.set(username=user, password=PASSWORD)
    secret = secret.render_as_string(hide_password=False)
    monkeypatch.setenv("ARCHJAX_STORAGE", secret)
    assert main(["run", f"{TOY}:grid24", "--workdir", str(tmp_path)]) == 0
    assert main(["status", f"{TOY}:grid24"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert f"{user}:***@" in text and PASSWORD not in text
    storage = studies.open_storage(secret)
    opt = runner.load(studies.load(f"{TOY}:grid24"), storage)
    stored = repr(opt.user_attrs) + repr([(t.user_attrs, t.system_attrs) for t in opt.trials])
    assert PASSWORD not in stored


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_bad_worker_count(capsys, workers):
    assert "--workers must be at least 1" in _error(
        capsys, ["run", f"{TOY}:grid24", "--workers", workers]
    )
