"""The URL a user types works, unchanged, in every tool of the ecosystem (issue 11, item 9).

SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; the project ships that driver, so the README's
form works in ``tuner``, ``worker``, ``optuna.load_study``, the ``optuna`` CLI and
optuna-dashboard, and ``tuner`` shows URLs in that same form. ``postgresql+psycopg2://`` keeps
working.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

from helpers import BIN, invoke
import optuna
import pytest
import sqlalchemy

import storage
from storage.url import resolve_url
from tuner.cli import app as tuner_app

DASHBOARD_PORT = 55421  # this suite's throw-away port range: 55420-55429


def plain(url: str) -> str:
    """``url`` as a user types it: ``postgresql://`` without a driver."""
    return sqlalchemy.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def plain_study(pg_url, tuner_home, synth_npz) -> tuple[str, str]:
    """A study made by ``tuner create`` through the plain URL: (url, study name)."""
    url = plain(pg_url)
    result = invoke(tuner_app, "create", "s", "--data", synth_npz(16), "--trials", "2", "--storage", url)
    assert result.exit_code == 0, result.stderr
    # What tuner shows is the form the user typed, not a rewritten one.
    assert f"in {url}" in result.stdout, result.stdout
    return url, "s"


@pytest.mark.parametrize(
    "typed, shown",
    [
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgres://u@h:5433/d", "postgresql://u@h:5433/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
    ],
)
def test_urls_are_kept_in_a_form_every_tool_accepts(tuner_home, typed, shown):
    assert resolve_url(typed) == shown
    sqlalchemy.create_engine(shown).dispose()  # the driver SQLAlchemy picks is installed


def test_plain_url_works_with_optuna_load_study(plain_study):
    url, name = plain_study
    study = optuna.load_study(study_name=name, storage=url)
    assert study.user_attrs  # the spec tuner create wrote
    assert sqlalchemy.make_url(url).drivername == "postgresql"
    health = storage.check(resolve_url(url))
    assert health.ok, health.error


def test_psycopg2_form_still_works(pg_url, tuner_home):
    assert pg_url.startswith("postgresql+psycopg2://")
    storage.init_schema(resolve_url(pg_url))
    assert storage.check(resolve_url(pg_url)).ok


@pytest.mark.slow
def test_plain_url_works_with_the_optuna_cli(plain_study):
    url, name = plain_study
    result = subprocess.run(
        [str(BIN / "optuna"), "studies", "--storage", url, "-f", "json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == [name]


@pytest.mark.slow
def test_plain_url_works_with_optuna_dashboard(plain_study):
    url, name = plain_study
    proc = subprocess.Popen(
        [str(BIN / "optuna-dashboard"), url, "--host", "127.0.0.1", "--port", str(DASHBOARD_PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD_PORT}/api/studies", timeout=5) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        assert body is not None, "optuna-dashboard did not answer"
        assert [study["study_name"] for study in body["study_summaries"]] == [name]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
