"""Create Optuna's schema once, and tell whether it is there.

Optuna creates its tables the first time an ``RDBStorage`` opens a database. Several workers
doing that at once race (``alembic_version already exists``), so only the coordinator creates the
schema, under a lock that also serialises concurrent coordinators: a PostgreSQL advisory lock, or
a file lock beside a SQLite database. Workers open storages with table creation switched off and
are refused with a clear message when the schema is missing.
"""

from __future__ import annotations

from optuna.storages import RDBStorage
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.engine import engine_kwargs
from storage.errors import StorageError
from storage.locks import named_lock
from storage.retry import ConnectionLost
from storage.url import mask_url, missing_sqlite_file, scrub

SCHEMA_LOCK = "mars-tuner:schema"
REQUIRED_TABLES = ("studies", "trials", "version_info", "alembic_version")


def short_engine(url: str) -> sqlalchemy.Engine:
    """An engine without a pool, for one-off checks that must not keep connections open.

    Raises:
        StorageError: SQLAlchemy cannot build an engine for the URL (unknown driver, bad form).
    """
    connect_args: dict[str, object] = {}
    if make_url(url).get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    try:
        return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot use {mask_url(url)}: {scrub(reason, url)}") from None


def current_revision(url: str) -> str | None:
    """The schema's alembic revision, or ``None`` when the schema has not been created.

    A SQLite file that does not exist has no schema; it is not created by asking (read-only
    commands such as ``tuner list`` must not leave empty database files behind).

    Raises:
        StorageError: the database cannot be reached.
    """
    if missing_sqlite_file(url) is not None:
        return None
    engine = short_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            if not set(REQUIRED_TABLES) <= tables:
                return None
            row = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).first()
            return None if row is None else str(row[0])
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        raise connection_error(exc, url) from None
    finally:
        engine.dispose()


def init_schema(url: str, *, session_role: str | None = None) -> str:
    """Create the schema if needed, safely under concurrency, and return its revision.

    Args:
        session_role: PostgreSQL role to create the tables as (``SET ROLE``), so that they
            belong to it rather than to the connecting superuser (``tuner db init --roles``).

    Raises:
        StorageError: unreachable database, or a schema too old for this Optuna.
    """
    try:
        with named_lock(url, SCHEMA_LOCK):
            kwargs = engine_kwargs(url, role="coordinator", session_role=session_role)
            storage = RDBStorage(url, engine_kwargs=kwargs)
            revision = storage.get_current_version()
            storage.engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise connection_error(exc, url) from None
    except StorageError:
        raise
    except RuntimeError as exc:  # Optuna's schema-compatibility error
        raise StorageError(f"{mask_url(url)}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:  # the SQLite lock file beside the database (read-only directory)
        raise StorageError(
            f"cannot create the database in {mask_url(url)}: {exc.strerror} (is its directory writable?)"
        ) from None
    if make_url(url).get_backend_name() == "sqlite":
        _enable_wal(url)
    return revision


def _enable_wal(url: str) -> None:
    """WAL lets local readers (status, dashboard) run while two workers write; it persists."""
    engine = short_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def connection_error(exc: BaseException, url: str) -> StorageError:
    """One line: the masked URL and the driver's own first line (e.g. 'Connection refused').

    A connection that was made and then ended (SQLAlchemy's ``connection_invalidated``) is a
    :class:`~storage.retry.ConnectionLost`, which callers retry; "cannot connect" is not.
    """
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).strip().splitlines() if line.strip()]
    reason = " ".join(lines[:2]) if lines else type(original).__name__
    if getattr(exc, "connection_invalidated", False):  # connected, then lost: retried by with_db_retry
        return ConnectionLost(f"lost the connection to {mask_url(url)}: {scrub(reason, url)}")
    return StorageError(f"cannot reach {mask_url(url)}: {scrub(reason, url)}")
