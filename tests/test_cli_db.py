"""`tuner db ...` and `--version` as a user runs them: real processes, real databases (the
error-line check runs in-process: Typer's CliRunner, the same click group)."""

from __future__ import annotations

import subprocess

from helpers import invoke, one_cli_error, run_cli
import pytest

from tuner.cli import app


def tuner(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("tuner", *args, env=env, timeout=120)


def test_version():
    result = tuner("--version")
    assert result.returncode == 0 and result.stdout.startswith("tuner ")


@pytest.mark.slow
def test_db_init_then_check_on_postgres(pg_url):
    assert tuner("db", "check", "--storage", pg_url).returncode == 1
    init = tuner("db", "init", "--storage", pg_url)
    assert init.returncode == 0, init.stderr
    check = tuner("db", "check", env={"TUNER_STORAGE": pg_url})
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().endswith("ok") and "studies:  0" in check.stdout


@pytest.mark.parametrize("command", [["db", "check"], ["db", "init"], ["list"]])
def test_unreachable_database_is_one_masked_line(command):
    result = invoke(app, *command, "--storage", "postgresql://alice:topsecret@127.0.0.1:1/optuna")
    line = one_cli_error(result, "alice:***@")
    assert line.startswith("error: cannot reach")
    assert "topsecret" not in result.stdout + result.stderr
    assert "schema:" not in result.stdout  # nothing is known about an unreachable database


@pytest.mark.slow
def test_read_only_commands_leave_no_database_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    listed = tuner("list", "--storage", url)
    assert listed.returncode == 0 and "no studies" in listed.stdout
    status = tuner("status", "s", "--storage", url)
    assert status.returncode == 1 and status.stderr.startswith("error: ")
    assert tuner("db", "check", "--storage", url).returncode == 1
    assert not (tmp_path / "new.db").exists()


@pytest.mark.slow
def test_embedded_default_needs_no_server(tmp_path):
    env = {"TUNER_HOME": str(tmp_path / "home"), "TUNER_STORAGE": ""}
    assert tuner("db", "init", env=env).returncode == 0
    check = tuner("db", "check", env=env)
    assert check.returncode == 0 and "sqlite" in check.stdout
    assert (tmp_path / "home" / "tuner.db").exists()
