"""Shared fixtures: a fresh PostgreSQL database per test, on the machine's real server."""

from __future__ import annotations

from collections.abc import Iterator
import os
import uuid

import psycopg2
import pytest

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL_TEMPLATE = os.environ.get(
    "TEST_PG_URL_TEMPLATE", "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
)


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a new, empty database; dropped (with its connections) after the test."""
    name = f"tuner_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = _admin()
    except psycopg2.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL is not reachable ({exc}); start it before running the tests")
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    try:
        yield PG_URL_TEMPLATE.format(db=name)
    finally:
        conn = _admin()
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def kill_connections(url: str) -> int:
    """Terminate every server connection to ``url``'s database, as a database restart would.

    Returns how many were killed, so a test can check there was something to kill.
    """
    from helpers import terminate_backends
    import sqlalchemy

    return terminate_backends(_admin(), sqlalchemy.make_url(url).database)


@pytest.fixture
def drop_connections():
    """The :func:`kill_connections` function, for tests that simulate a database restart."""
    return kill_connections


@pytest.fixture
def tuner_home(tmp_path, monkeypatch) -> Iterator[os.PathLike]:
    """An isolated embedded-default location, and no TUNER_STORAGE from the environment."""
    home = tmp_path / "tuner-home"
    monkeypatch.setenv("TUNER_HOME", str(home))
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.delenv("TUNER_DB_PASSWORD_FILE", raising=False)
    yield home
