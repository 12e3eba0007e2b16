"""Studies and files from outside the tuner: hostile or hand-made input, never a traceback (issue 22).

Each test is a way a careless user, plain Optuna or an attacker with database access broke a
command: one ``error:`` line, or a gap shown in the page, is the contract. Commands run
in-process through Typer's ``CliRunner`` (the same click group catches errors as for a user).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contract.synth import write_npz
from helpers import one_cli_error
from tuner.cli import app as tuner_app


def invoke(app, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mars.npz"
    write_npz(path, 24, seed=0)
    return path


# --- 5. --enqueue files go through the same guarded reader as --space and --config ----------


def _enqueue_file(tmp_path: Path, case: str) -> Path:
    if case == "device":
        return Path("/dev/zero")
    path = tmp_path / f"{case.replace(' ', '-')}.yaml"
    if case == "fifo":
        os.mkfifo(path)
    elif case == "over 1 MiB":
        path.write_text("learning_rate: 0.001\n" + "# padding\n" * 200_000)
    elif case == "deep nesting":
        path.write_text("learning_rate: " + "[" * 20_000)
    elif case == "5000-digit integer":
        path.write_text("epochs: " + "9" * 5000 + "\n")
    elif case == "alias":
        path.write_text("base: &b 64\nbatch_size: *b\n")
    return path


@pytest.mark.parametrize("case, reason", [
    ("fifo", "not a regular file"), ("device", "not a regular file"), ("over 1 MiB", "larger than 1024 KiB"),
    ("deep nesting", "nested too deeply"), ("5000-digit integer", "digits"), ("alias", "YAML aliases"),
])
def test_hostile_enqueue_files_are_one_short_line(tuner_home, tmp_path, npz, case, reason):
    path = _enqueue_file(tmp_path, case)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    one_cli_error(invoke(tuner_app, "create", "s", "--data", npz, "--enqueue", path, "--storage", url),
                  f"--enqueue {path}", reason)
    assert not (tmp_path / "db.sqlite").exists()
