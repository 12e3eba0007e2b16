"""Run one thread's Optuna storage calls on a given connection, inside its open transaction.

Optuna's ``RDBStorage`` takes a pooled connection per call and commits each call on its own.
Under the budget lock (a *transaction* advisory lock held on a connection) that meant a second
connection per worker, and a section whose steps other sessions could see half done. Routed onto
the lock's own connection, each call becomes a savepoint of the lock's transaction: the worker
holds one connection, and what the section did becomes visible at once when the lock is released,
or not at all if the holder's session dies (the server rolls it back with the lock).
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import threading
from typing import Any

from optuna.storages import RDBStorage
import sqlalchemy
from sqlalchemy import orm

_routed = threading.local()  # .conn: this thread's routed connection, for read()


@contextlib.contextmanager
def on_connection(rdb: RDBStorage, conn: sqlalchemy.Connection) -> Iterator[None]:
    """Inside the ``with``, this thread's ``rdb`` calls run on ``conn`` (other threads: the pool).

    Optuna keeps one session per thread in ``rdb.scoped_session`` and only closes it after each
    call, so placing a connection-bound session there routes every call of this thread.
    """
    registry = rdb.scoped_session.registry
    previous = registry() if registry.has() else None
    if previous is not None:
        previous.close()
    session = orm.Session(bind=conn, join_transaction_mode="create_savepoint")
    registry.set(session)
    _routed.conn = conn
    try:
        yield
    finally:
        _routed.conn = None
        session.close()
        registry.clear()  # the next call gets a pool-bound session again


def routed_connection() -> sqlalchemy.Connection | None:
    """This thread's connection inside :func:`on_connection`, else ``None``."""
    return getattr(_routed, "conn", None)


def read(rdb: RDBStorage, statement: sqlalchemy.TextClause, params: dict[str, Any]) -> list[Any]:
    """Rows of a read-only ``statement``, in this thread's routed transaction if there is one.

    There it runs on the connection itself: a read needs no savepoint, and the lock's section is
    the one place where round trips are paid by every waiting worker.
    """
    conn = routed_connection()
    if conn is not None:
        return list(conn.execute(statement, params).all())
    session = rdb.scoped_session()
    try:
        return list(session.execute(statement, params).all())
    finally:
        session.close()
