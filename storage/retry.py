"""Ride out a database outage instead of losing a trial's result.

A worker that has trained for an hour must not crash because PostgreSQL restarted at the moment
it reports. ``pool_pre_ping`` replaces dead pooled connections; this module retries the call
itself, with exponential backoff, for errors that mean "the database is not there right now",
until the whole ``max_wait_s`` (the study's grace period) has passed: the last try is made at the
deadline, not one back-off step before it.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
import time
from typing import TypeVar

import optuna
import sqlalchemy

from storage.errors import StorageError

T = TypeVar("T")
_logger = logging.getLogger(__name__)

# Connection-level failures. IntegrityError and friends are real bugs and are not retried.
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
# A session whose connection died mid-transaction answers the next call with PendingRollbackError
# until it is rolled back (Optuna's scoped session does that on the way out): worth one more try.
_TRANSIENT_AFTER_LOSS = (sqlalchemy.exc.PendingRollbackError,)
# The same, raised by the driver itself where SQLAlchemy did not wrap it (class names of DB-API 2).
_DBAPI_TRANSIENT_NAMES = {"OperationalError", "InterfaceError"}
_MAX_CHAIN = 8


class DatabaseUnavailable(Exception):
    """Marker base for errors that mean the database was unreachable (see :func:`is_transient`)."""


class ConnectionLost(StorageError, DatabaseUnavailable):
    """The database answered, then the connection ended under a call (killed, server restarting).

    A one-line :class:`StorageError` for the CLI, and transient for :func:`with_db_retry`: unlike
    "cannot connect" (the database is not there: ``--wait-for-db`` decides whether to wait), a
    connection lost mid-way is worth trying again at once.
    """


def is_transient(exc: BaseException) -> bool:
    """True for errors caused by an unreachable or restarting database, or a killed connection.

    Follows the ``__cause__`` / ``__context__`` chain: Optuna wraps commit-time SQLAlchemy errors
    in ``StorageInternalError``, and a killed connection often surfaces as
    OperationalError -> PendingRollbackError -> StorageInternalError.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _MAX_CHAIN:
        if _is_transient_one(current):
            return True
        if not isinstance(current, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
            return False  # only look through database wrappers, not any error raised while handling one
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (*_TRANSIENT, *_TRANSIENT_AFTER_LOSS, DatabaseUnavailable)):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    module = type(exc).__module__ or ""
    if module.split(".")[0] in ("psycopg2", "psycopg"):
        return any(cls.__name__ in _DBAPI_TRANSIENT_NAMES for cls in type(exc).__mro__)
    return False


def describe(exc: BaseException) -> str:
    """``Type: first line`` of the root cause: the deepest driver error in the chain (no URL, so
    no secret).

    Not simply the deepest exception: SQLAlchemy's pool raises (and handles) an empty
    ``InvalidatePoolError`` when its pre-ping finds a dead connection, and Optuna wraps what
    follows in a ``StorageInternalError`` that says nothing of the cause; the driver's own words
    ("Connection refused", "server closed the connection unexpectedly") are what a user can act on.
    """
    chain: list[BaseException] = [exc]
    while len(chain) < _MAX_CHAIN and (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(nxt)
    drivers = [e.orig for e in chain if isinstance(e, sqlalchemy.exc.DBAPIError) and e.orig is not None]
    said = [e for e in chain if _first_line(e)]
    root = (drivers or said or chain)[-1]
    line = _first_line(root)
    return f"{type(root).__name__}: {line[:160]}" if line else type(root).__name__


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message; '' for none (``InvalidatePoolError()`` says ``()``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "()"]
    return lines[0] if lines else ""


def with_db_retry(
    call: Callable[[], T],
    *,
    what: str,
    max_wait_s: float = 300.0,
    first_delay_s: float = 1.0,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``call``; on a transient database error, wait and try again for up to ``max_wait_s``.

    ``on_retry`` receives a one-line message per retry (workers print it); without it the line
    goes to this module's logger, so each retry is reported exactly once. The last error is
    re-raised when the time is up.
    """
    deadline = time.monotonic() + max_wait_s
    delay = first_delay_s
    while True:
        try:
            return call()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not is_transient(exc) or left <= 0:
                raise
            wait = min(delay, left)
            message = f"database unavailable during {what} ({describe(exc)}); retrying in {wait:.0f}s"
            if on_retry is not None:
                on_retry(message)
            else:
                _logger.warning(message)
            time.sleep(wait)
            delay = min(delay * 2, 30.0)
