"""SQLAlchemy engine settings per backend.

Every worker process holds its own connection pool, and PostgreSQL allows 100 connections by
default, so a worker keeps one connection open: the budget lock's section runs on the lock's own
connection (worker.budget), the heartbeat thread borrows the pooled one between beats, and an
overflow connection, opened only when the trial loop and the heartbeat collide, is closed as soon
as it is returned. ``pool_pre_ping`` makes a worker survive a database restart: a dead pooled
connection is replaced instead of failing the next query.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy.engine import make_url

from storage.errors import SettingError

POOL_SIZE = 1
MAX_OVERFLOW = 2
ENV_POOL_SIZE = "TUNER_POOL_SIZE"
ENV_MAX_OVERFLOW = "TUNER_MAX_OVERFLOW"
CONNECT_TIMEOUT_S = 10
# A peer that vanished (machine off, network partition) is noticed in about idle + 3 x interval
# seconds instead of the kernel's two hours, by the client (libpq) and by the server (GUCs).
KEEPALIVES_IDLE_S = 10
KEEPALIVES_INTERVAL_S = 5
KEEPALIVES_COUNT = 3
# Keepalives only probe an idle socket. A statement sent into a blackhole (a partition that drops
# packets, no RST) leaves unacknowledged data, which the kernel retransmits for ~15 minutes: the
# call would hang that long. TCP_USER_TIMEOUT bounds it, both ways, to the keepalives' own limit.
TCP_USER_TIMEOUT_MS = (KEEPALIVES_IDLE_S + KEEPALIVES_INTERVAL_S * KEEPALIVES_COUNT) * 1000
# No statement of ours takes a minute; one that waits that long is stuck behind a frozen session.
STATEMENT_TIMEOUT_MS = 60_000
LOCK_TIMEOUT_MS = 30_000
# A frozen process must not keep row locks: its open transaction is ended by the server.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
SQLITE_BUSY_TIMEOUT_S = 60


def engine_kwargs(url: str, *, role: str = "worker", session_role: str | None = None) -> dict[str, Any]:
    """Engine keyword arguments for ``optuna.storages.RDBStorage(engine_kwargs=...)``.

    Args:
        url: the resolved storage URL.
        role: shown to the DBA as PostgreSQL ``application_name``, with the host and pid.
        session_role: a PostgreSQL role every session switches to (``-c role=...``).
    """
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # Several local processes write one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "postgresql":
        app = f"mars-tuner-{role}@{socket.gethostname()}:{os.getpid()}"[:63]
        connect_args: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": app,
            **_keepalive_args(session_role),
        }
        if make_url(url).get_driver_name() == "psycopg":
            # psycopg 3 prepares a statement on the server after five runs; behind a pooler in
            # transaction mode the next transaction may land on a server connection without it.
            connect_args["prepare_threshold"] = None
        return {**pool_settings(), "pool_pre_ping": True, "pool_recycle": 1800, "connect_args": connect_args}
    return {"pool_pre_ping": True}


def pool_settings() -> dict[str, int]:
    """``pool_size`` and ``max_overflow``, from ``TUNER_POOL_SIZE`` / ``TUNER_MAX_OVERFLOW`` or the defaults.

    :func:`storage.url.resolve_url` calls it for every PostgreSQL URL, so a typo fails every
    command at once (``tuner db check`` included) rather than when a pool is first made.

    Raises:
        SettingError: a value that is not a whole number in range.
    """
    return {
        "pool_size": _env_count(ENV_POOL_SIZE, POOL_SIZE, least=1),
        "max_overflow": _env_count(ENV_MAX_OVERFLOW, MAX_OVERFLOW, least=0),
    }


def server_settings() -> dict[str, int]:
    """The server-side settings every session of ours runs with (sent as startup ``options``).

    A pooler in transaction mode (PgBouncer) does not pass startup options on: it is configured
    to ignore them and to set these on each server connection instead (:func:`pooler_connect_query`).
    """
    return {
        "tcp_keepalives_idle": KEEPALIVES_IDLE_S,
        "tcp_keepalives_interval": KEEPALIVES_INTERVAL_S,
        "tcp_keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "statement_timeout": STATEMENT_TIMEOUT_MS,
        "lock_timeout": LOCK_TIMEOUT_MS,
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT_MS,
    }


def pooler_connect_query() -> str:
    """PgBouncer's ``connect_query``: :func:`server_settings` on every connection it opens.

    Every client of the pool wants the same values, so a session-level ``SET`` on a shared server
    connection leaks nothing; what must differ per transaction (the budget lock's timeouts) is
    set with ``set_config(..., true)`` inside it (storage.locks).
    """
    return "; ".join(f"SET {name} = {value}" for name, value in server_settings().items())


def _keepalive_args(session_role: str | None = None) -> dict[str, Any]:
    """libpq keepalives and TCP user timeout plus the server-side timeouts, as ``connect`` arguments."""
    server: dict[str, Any] = dict(server_settings())
    if session_role is not None:  # behind PgBouncer: log in as that role (options are ignored)
        server["role"] = session_role
    return {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_S,
        "keepalives_interval": KEEPALIVES_INTERVAL_S,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
    }


def _env_count(name: str, default: int, *, least: int) -> int:
    """A whole number from the environment; a typo is one line naming the variable."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = least - 1
    if value < least:
        raise SettingError(f"{name} must be a whole number >= {least}, got {raw[:40]!r}")
    return value
