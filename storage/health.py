"""Is the database usable, and by this version of Optuna?"""

from __future__ import annotations

import dataclasses
import functools

from optuna.storages import RDBStorage
import sqlalchemy
from sqlalchemy.engine import make_url

from storage.errors import StorageError
from storage.schema import connection_error, current_revision, short_engine
from storage.url import mask_url, missing_sqlite_file


@dataclasses.dataclass(frozen=True)
class Health:
    """What ``tuner db check`` prints; ``ok`` is what scripts test."""

    url: str  # masked
    backend: str
    reachable: bool
    server_version: str | None = None
    schema_revision: str | None = None
    head_revision: str | None = None
    n_studies: int | None = None
    error: str | None = None

    @property
    def schema_current(self) -> bool:
        return self.schema_revision is not None and self.schema_revision == self.head_revision

    @property
    def ok(self) -> bool:
        return self.reachable and self.schema_current


@functools.cache
def head_revision() -> str:
    """The schema revision this Optuna writes.

    Optuna exposes it only on a live storage, so ask a throw-away in-memory one (~0.1 s).
    """
    return RDBStorage("sqlite:///:memory:").get_head_version()


def check(url: str) -> Health:
    """Connect once, read the server version, schema revision and number of studies.

    Never raises for an unreachable database: the problem is in ``Health.error``, one line,
    password masked.
    """
    masked = mask_url(url)
    backend = make_url(url).get_backend_name()
    head = head_revision()
    path = missing_sqlite_file(url)
    if path is not None:
        missing = f"no database file {path}: create it with `tuner db init` or `tuner create`"
        return Health(masked, backend, False, head_revision=head, error=missing)
    try:
        engine = short_engine(url)
    except StorageError as exc:
        return Health(masked, backend, False, head_revision=head, error=str(exc))
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                server = conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one()
            else:
                server = "SQLite " + str(conn.exec_driver_sql("select sqlite_version()").scalar_one())
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return Health(masked, backend, False, head_revision=head, error=str(connection_error(exc, url)))
    finally:
        engine.dispose()
    try:
        revision = current_revision(url)
    except StorageError as exc:
        return Health(masked, backend, False, server, head_revision=head, error=str(exc))
    n_studies = None
    if revision is not None:
        engine = short_engine(url)
        try:
            with engine.connect() as conn:
                n_studies = conn.execute(sqlalchemy.text("SELECT count(*) FROM studies")).scalar_one()
        finally:
            engine.dispose()
    error: str | None = None
    if revision is None:
        error = f"no Optuna schema in {masked}: run `tuner db init`"
    elif revision != head:
        error = (
            f"schema revision {revision} is not this Optuna's {head}: "
            f"run `optuna storage upgrade --storage URL` (do not mix Optuna 4 and 5 workers)"
        )
    return Health(masked, backend, True, str(server), revision, head, n_studies, error)
