"""Cross-process, cross-machine named locks on the study database.

Used where Optuna itself has no transaction that spans what we need: creating the schema, and
"count the study's trials, then ask for one more" so that workers on many machines never overrun
a shared trial budget. PostgreSQL gives advisory locks (held by one connection, released with it,
so a killed worker cannot leave a lock behind); for the embedded SQLite file a ``flock`` on a
sibling file does the same on one machine.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import fcntl
import hashlib
import logging
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

_logger = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def named_lock(url: str, name: str, engine: sqlalchemy.Engine | None = None) -> Iterator[None]:
    """Hold the lock ``name`` on the database at ``url`` for the ``with`` block.

    Args:
        engine: an engine to borrow a connection from (a worker's pooled engine); without it a
            throw-away connection is opened.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            yield
            return
        path = Path(database)
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = hashlib.sha256(name.encode()).hexdigest()[:12]
        with open(path.with_name(f"{path.name}.{suffix}.lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    owned = engine is None
    if engine is None:
        engine = sqlalchemy.create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": 5}
        )
    key = lock_key(name)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                _unlock(conn, key, name)
    finally:
        if owned:
            engine.dispose()


def _unlock(conn: sqlalchemy.Connection, key: int, name: str) -> None:
    """Release the lock; a connection that died meanwhile released it already.

    Raising here would make the caller redo work that succeeded (an ``ask`` that created a
    trial), so a lost connection is logged, not raised.
    """
    try:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        # Close the connection for good rather than return it to the pool: if the session is
        # somehow still alive, closing it is what releases its lock.
        conn.invalidate()
        _logger.warning("lock %r: connection lost before unlock (%s); the server released it",
                        name, type(exc).__name__)
