"""A throw-away PgBouncer in transaction pooling mode, in front of one PostgreSQL server.

The deployment's settings (docs/pgbouncer.md): transaction pooling, the worker's startup
``options`` ignored and set on every server connection instead (``connect_query``, from
:func:`storage.engine.pooler_connect_query`). It listens on a Unix socket in a private directory
only (no TCP port taken on a shared machine); clients use ``host=<dir>&port=<port>``.
PgBouncer refuses to run as root, so under root it runs as ``postgres``.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import tempfile
import time
from typing import Any

from storage.engine import pooler_connect_query


class BouncerError(RuntimeError):
    """PgBouncer is not installed or did not start; one line for the user."""


class Bouncer:
    """``with Bouncer(upstream_host, upstream_port) as b: b.url(db)``."""

    def __init__(
        self, host: str, port: int, *, listen_port: int = 55419, pool_size: int = 20, max_client_conn: int = 2000
    ) -> None:
        self.host, self.port, self.listen_port = host, port, listen_port
        self.pool_size, self.max_client_conn = pool_size, max_client_conn
        self.dir = Path(tempfile.mkdtemp(prefix="nw-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://postgres@/{database}?host={self.dir}&port={self.listen_port}"

    def admin_dsn(self) -> str:
        """libpq DSN of PgBouncer's console (``SHOW STATS``)."""
        return f"host={self.dir} port={self.listen_port} user=postgres dbname=pgbouncer"

    def __enter__(self) -> Bouncer:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(binary):
            raise BouncerError("pgbouncer is not installed (apt-get install pgbouncer)")
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        ini = self.dir / "pgbouncer.ini"
        query = pooler_connect_query().replace("'", "''")
        ini.write_text(
            "[databases]\n"
            f"* = host={self.host} port={self.port} connect_query='{query}'\n"
            "[pgbouncer]\n"
            "listen_addr =\n"
            f"listen_port = {self.listen_port}\n"
            f"unix_socket_dir = {self.dir}\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {self.max_client_conn}\n"
            f"default_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = options\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        user = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            for path in self.dir.iterdir():
                shutil.chown(path, "postgres")
            user = ["-u", "postgres"]
        limit = max(4096, 2 * self.max_client_conn + 100)
        self.proc = subprocess.Popen(
            ["sh", "-c", f'ulimit -n {limit} && exec "$0" "$@"', binary, *user, str(ini)],
            # Its log goes to the logfile; an unread pipe would fill up and block it.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket = self.dir / f".s.PGSQL.{self.listen_port}"
        deadline = time.monotonic() + 15
        while not socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                log = self.dir / "pgbouncer.log"
                tail = log.read_text()[-300:] if log.exists() else ""
                raise BouncerError(f"pgbouncer did not start: {tail.strip() or 'no log'}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def show(self, what: str, database: str) -> dict[str, Any]:
        """The row of the admin console's ``SHOW <what>`` (STATS, POOLS) for ``database``, by column."""
        import psycopg2

        conn = psycopg2.connect(self.admin_dsn())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW {what}")
                names = [d[0] for d in cur.description]
                for row in cur.fetchall():
                    if row[0] == database:
                        return dict(zip(names, row, strict=True))
        finally:
            conn.close()
        return {}

    def stats(self, database: str) -> dict[str, int]:
        """PgBouncer's ``SHOW STATS`` row for ``database`` (totals since start)."""
        return {k: int(v) for k, v in self.show("STATS", database).items() if k != "database"}
