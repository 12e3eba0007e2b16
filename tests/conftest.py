"""Shared fixtures: a fresh PostgreSQL database per test, on the machine's real server.

Making and dropping a database waits on the server's disk (0.3-0.8 s each on the loaded CI
machine): :class:`_Databases` does it on a thread of its own, one test ahead and one behind, so
that the wait overlaps the tests instead of adding to each. Tests that need Optuna's schema but do
not test its creation take ``pg_schema_url``, a copy of a database set up once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
import os
from pathlib import Path
import uuid

import psycopg2
import pytest

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL_TEMPLATE = os.environ.get("TEST_PG_URL_TEMPLATE", "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    conn.autocommit = True
    return conn


class _Databases:
    """This session's test databases, made one ahead and dropped behind on one thread.

    ``take`` hands out a database made while the previous test ran and starts the next one;
    ``drop`` queues the drop. One thread and one admin connection do all of it, in order.
    """

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-databases")
        self._conn: psycopg2.extensions.connection | None = None
        self._ready: dict[str | None, Future[str]] = {}
        self._errors: list[str] = []

    def take(self, template: str | None = None) -> str:
        """A new database, a copy of ``template`` (or of the server's default); starts the next."""
        ready = self._ready.pop(template, None) or self._thread.submit(self._create, template)
        try:
            name = ready.result()
        except psycopg2.OperationalError as exc:  # pragma: no cover - environment problem
            pytest.fail(f"PostgreSQL is not reachable ({exc}); start it before running the tests")
        self._ready[template] = self._thread.submit(self._create, template)
        return name

    def drop(self, name: str) -> None:
        """Drop ``name`` and end its connections, after what is queued before it."""
        self._thread.submit(self._drop, name)

    def close(self) -> list[str]:
        """Drop the databases made ahead, wait for every drop; the drops that failed."""
        for ready in self._ready.values():
            self._thread.submit(self._drop_made, ready)
        self._thread.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
        return self._errors

    def _create(self, template: str | None) -> str:
        name = f"tuner_test_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def _drop(self, name: str) -> None:
        try:
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg2.Error as exc:
            self._errors.append(f"{name}: {exc}")

    def _drop_made(self, ready: Future[str]) -> None:
        if ready.exception() is None:
            self._drop(ready.result())

    def _execute(self, sql: str) -> None:
        for attempt in (1, 2):  # a connection the server ended is made again, once
            if self._conn is None or self._conn.closed:
                self._conn = _admin()
            try:
                with self._conn.cursor() as cur:
                    cur.execute(sql)
                return
            except psycopg2.OperationalError:
                if attempt == 2 or not self._conn.closed:
                    raise


@pytest.fixture(scope="session")
def _databases() -> Iterator[_Databases]:
    databases = _Databases()
    yield databases
    failed = databases.close()
    if failed:
        pytest.fail("test databases not dropped: " + "; ".join(failed))


@pytest.fixture(scope="session")
def _schema_template(_databases: _Databases) -> Iterator[str]:
    """A database holding Optuna's schema (as ``tuner db init`` makes it), made once: no
    connection stays open to it, so that ``CREATE DATABASE ... TEMPLATE`` may copy it."""
    import storage

    name = _databases.take()
    storage.init_schema(PG_URL_TEMPLATE.format(db=name))
    yield name
    _databases.drop(name)


@pytest.fixture
def pg_url(_databases: _Databases) -> Iterator[str]:
    """URL of a new, empty database; dropped (with its connections) after the test."""
    name = _databases.take()
    try:
        yield PG_URL_TEMPLATE.format(db=name)
    finally:
        _databases.drop(name)


def _schema_database(databases: _Databases, template: str) -> Iterator[str]:
    name = databases.take(template)
    try:
        yield PG_URL_TEMPLATE.format(db=name)
    finally:
        databases.drop(name)


@pytest.fixture
def pg_schema_url(_databases: _Databases, _schema_template: str) -> Iterator[str]:
    """URL of a new database that already holds Optuna's schema, for tests of what comes after
    ``tuner db init`` (tests of creating the schema take the empty ``pg_url``); dropped after."""
    yield from _schema_database(_databases, _schema_template)


@pytest.fixture(scope="module")
def pg_schema_module_url(_databases: _Databases, _schema_template: str) -> Iterator[str]:
    """The same, one for a module: for a study that a module-scoped fixture builds once and that
    several tests only read."""
    yield from _schema_database(_databases, _schema_template)


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "npz(n, seed=0, **kwargs): the `npz` fixture's contract.synth.write_npz arguments for a "
        "module (its pytestmark; default: 24 images, seed 0)",
    )


@pytest.fixture(scope="session")
def synth_npz(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``write_npz(n, seed=..., **kwargs)`` into a file of its own, once per session for the same
    arguments: the files are shared between modules, so tests read them and never change them."""
    from contract.synth import write_npz

    made: dict[tuple, Path] = {}

    def make(n: int = 24, seed: int = 0, **kwargs: object) -> Path:
        key = (n, seed, *sorted(kwargs.items()))
        if key not in made:
            made[key] = tmp_path_factory.mktemp("data") / "mars.npz"
            write_npz(made[key], n, seed=seed, **kwargs)  # type: ignore[arg-type]
        return made[key]

    return make


@pytest.fixture(scope="module")
def npz(request: pytest.FixtureRequest, synth_npz: Callable[..., Path]) -> Path:
    """A synthetic challenge file (read-only): 24 images, seed 0, unless the module's
    ``pytestmark`` holds ``pytest.mark.npz(n, seed=..., ...)``."""
    marker = request.node.get_closest_marker("npz")
    args, kwargs = (marker.args, marker.kwargs) if marker else ((), {})
    return synth_npz(*args, **kwargs)
