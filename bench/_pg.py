"""The throw-away PostgreSQL databases benchmarks build their studies in.

Each run creates a fresh ``bench_<uuid>`` database on the machine's server (``BENCH_PG_ADMIN_DSN``)
and drops it at the end, so a benchmark never touches a real study.
"""

from __future__ import annotations

import os
from typing import Any
import uuid

ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
URL_TEMPLATE = os.environ.get("BENCH_PG_URL_TEMPLATE", "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")


class BenchError(RuntimeError):
    """The benchmark cannot run (e.g. PostgreSQL unreachable); one line for the user."""


def admin() -> Any:
    """An autocommit connection to the maintenance database (for CREATE/DROP DATABASE)."""
    import psycopg2

    try:
        conn = psycopg2.connect(ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"PostgreSQL not reachable ({first}); set BENCH_PG_ADMIN_DSN") from None
    conn.autocommit = True
    return conn


def create_database() -> tuple[str, str]:
    """A fresh, empty database -> (name, SQLAlchemy URL)."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    conn = admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, URL_TEMPLATE.format(db=name)


def drop_database(name: str, conn: Any = None) -> None:
    """Drop ``name``; ``conn``: an admin connection opened early (workers may fill the server)."""
    conn = conn or admin()
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()
