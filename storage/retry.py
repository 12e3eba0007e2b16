"""Ride out a database outage instead of losing a trial's result.

A worker that has trained for an hour must not crash because PostgreSQL restarted at the moment
it reports. ``pool_pre_ping`` replaces dead pooled connections; this module retries the call
itself, with exponential backoff, for errors that mean "the database is not there right now".
"""

from __future__ import annotations

from collections.abc import Callable
import logging
import time
from typing import TypeVar

import optuna
import sqlalchemy

T = TypeVar("T")
_logger = logging.getLogger(__name__)

# Connection-level failures. IntegrityError and friends are real bugs and are not retried.
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def is_transient(exc: BaseException) -> bool:
    """True for errors caused by an unreachable or restarting database."""
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    # Optuna wraps commit-time SQLAlchemy errors in StorageInternalError.
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    return False


def with_db_retry(
    call: Callable[[], T],
    *,
    what: str,
    max_wait_s: float = 300.0,
    first_delay_s: float = 1.0,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``call``; on a transient database error, wait and try again for up to ``max_wait_s``.

    ``on_retry`` receives a one-line message per retry (workers print it). The last error is
    re-raised when the time is up.
    """
    deadline = time.monotonic() + max_wait_s
    delay = first_delay_s
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            message = f"database unavailable during {what} ({type(exc).__name__}); retrying in {delay:.0f}s"
            _logger.warning(message)
            if on_retry is not None:
                on_retry(message)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
