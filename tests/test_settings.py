"""Configuration errors (environment variables, the password file) are one ``error:`` line at once.

A wrong setting is not a database outage: waiting (``--wait-for-db``) cannot fix it, and
``tuner db check`` must not say "ok" while every other command would fail.
"""

from __future__ import annotations

import os
from pathlib import Path
import time

from helpers import invoke, one_cli_error, one_error_line, run_cli
import pytest

import storage
from storage.url import read_password_file, resolve_url
from tuner.cli import app as tuner_app

pytestmark = pytest.mark.npz(16, seed=0)


@pytest.fixture
def study_url(tuner_home, pg_schema_url, npz) -> str:
    """A PostgreSQL database holding a study ``s``: what a worker joins and ``db check`` calls ok."""
    result = invoke(tuner_app, "create", "s", "--data", npz, "--storage", pg_schema_url, "--trials", "1")
    assert result.exit_code == 0, result.stderr
    return pg_schema_url


def _secret(path: Path, text: str = "hunter2\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- TUNER_POOL_SIZE / TUNER_MAX_OVERFLOW ---------------------------------------------------


@pytest.mark.parametrize("variable, value", [("TUNER_POOL_SIZE", "2x"), ("TUNER_MAX_OVERFLOW", "-1")])
def test_db_check_does_not_say_ok_with_a_pool_setting_typo(study_url, monkeypatch, variable, value):
    assert invoke(tuner_app, "db", "check", "--storage", study_url).stdout.strip().endswith("ok")
    monkeypatch.setenv(variable, value)
    result = invoke(tuner_app, "db", "check", "--storage", study_url)
    one_cli_error(result, variable, repr(value))
    assert "ok" not in result.stdout.split()


@pytest.mark.slow
def test_worker_does_not_wait_for_the_database_on_a_pool_setting_typo(study_url, npz):
    start = time.monotonic()
    result = run_cli(
        "worker",
        "run",
        "--study",
        "s",
        "--data",
        str(npz),
        "--storage",
        study_url,
        "--wait-for-db",
        "60",
        env={"TUNER_POOL_SIZE": "2x"},
        timeout=120,
    )
    line = one_error_line(result.stdout + result.stderr, result.returncode)
    assert "TUNER_POOL_SIZE" in line
    assert time.monotonic() - start < 30, "the typo was waited on as if the database were down"


# --- TUNER_DB_PASSWORD_FILE ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "directory", "empty", "blank", "world-readable", "world-writable"])
def test_bad_password_file_is_one_line_at_once(tuner_home, tmp_path, kind):
    path = tmp_path / "pw"
    if kind == "fifo":
        os.mkfifo(path, 0o600)  # no writer: a plain open() blocks forever
    elif kind == "directory":
        path.mkdir(mode=0o700)
    else:
        text = {"empty": "", "blank": " \n\n"}.get(kind, "hunter2\n")
        _secret(path, text, {"world-readable": 0o644, "world-writable": 0o602}.get(kind, 0o600))
    needle = {
        "fifo": "not a regular file",
        "directory": "not a regular file",
        "empty": "is empty",
        "blank": "is empty",
    }.get(kind, "other users")
    with pytest.raises(storage.StorageError, match=needle):
        read_password_file(path, "TUNER_DB_PASSWORD_FILE")
    # As a user meets it: a real process, which must neither hang nor try to connect.
    start = time.monotonic()
    result = run_cli(
        "tuner",
        "db",
        "check",
        "--storage",
        "postgresql://u@127.0.0.1:1/d",
        env={"TUNER_DB_PASSWORD_FILE": str(path)},
        timeout=60,
    )
    line = one_error_line(result.stderr, result.returncode)
    assert f"TUNER_DB_PASSWORD_FILE={path}" in line and needle in line, line
    assert "hunter2" not in result.stdout + result.stderr
    assert time.monotonic() - start < 30


def test_password_file_readable_by_its_group_is_used(tuner_home, tmp_path, monkeypatch):
    # The compose recipe: owner read/write, the containers' group read, nobody else.
    monkeypatch.setenv("TUNER_DB_PASSWORD_FILE", str(_secret(tmp_path / "pw", "s3cret\n", 0o640)))
    assert resolve_url("postgresql://u@h/d") == "postgresql://u:s3cret@h/d"


# --- TUNER_WAIT_FOR_DB -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1", "1e999"])
def test_wait_for_db_must_be_a_finite_number_of_seconds(tmp_path, value):
    start = time.monotonic()
    result = run_cli(
        "worker",
        "run",
        "--study",
        "s",
        "--data",
        str(tmp_path / "x.npz"),
        "--storage",
        f"sqlite:///{tmp_path / 'none.db'}",
        env={"TUNER_WAIT_FOR_DB": value},
        timeout=60,
    )
    line = one_error_line(result.stdout + result.stderr, result.returncode, expected=2)
    assert "--wait-for-db" in line and "finite number of seconds" in line, line
    assert "infs left" not in result.stdout
    assert time.monotonic() - start < 30
