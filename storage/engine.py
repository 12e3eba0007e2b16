"""SQLAlchemy engine settings per backend.

Every worker process holds its own connection pool, and PostgreSQL allows 100 connections by
default. A worker needs at most two at once (the trial loop and the heartbeat thread), so pools
are kept small. ``pool_pre_ping`` makes a worker survive a database restart: a dead pooled
connection is replaced instead of failing the next query.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy.engine import make_url

from storage.errors import StorageError

POOL_SIZE = 2
MAX_OVERFLOW = 2
CONNECT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 60


def engine_kwargs(url: str, *, role: str = "worker") -> dict[str, Any]:
    """Engine keyword arguments for ``optuna.storages.RDBStorage(engine_kwargs=...)``.

    Args:
        url: the resolved storage URL.
        role: shown to the DBA as PostgreSQL ``application_name``, with the host and pid.
    """
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # Several local processes write one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "postgresql":
        app = f"mars-tuner-{role}@{socket.gethostname()}:{os.getpid()}"[:63]
        return {
            "pool_size": _env_count("TUNER_POOL_SIZE", POOL_SIZE, least=1),
            "max_overflow": _env_count("TUNER_MAX_OVERFLOW", MAX_OVERFLOW, least=0),
            "pool_pre_ping": True,
            "pool_recycle": 1800,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": app},
        }
    return {"pool_pre_ping": True}


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
        raise StorageError(f"{name} must be a whole number >= {least}, got {raw[:40]!r}")
    return value
