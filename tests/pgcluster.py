"""A throw-away PostgreSQL 15 cluster that a test may stop and start (the main one it may not).

``pg_createcluster`` on a port of its own (``TEST_PG_FAULT_PORT``, default 55410), trust auth,
no fsync (its data is thrown away); dropped after the module. Needs root (the Debian cluster
tools switch to the ``postgres`` user) and the ``postgresql-common`` tools; otherwise the tests
that use it are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import os
from pathlib import Path
import shutil
import subprocess
import uuid

import psycopg2
import pytest

VERSION = "15"
PORT = int(os.environ.get("TEST_PG_FAULT_PORT", "55410"))


@dataclasses.dataclass
class Cluster:
    name: str
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=5)
        conn.autocommit = True
        return conn

    def new_database(self) -> str:
        """A fresh database's URL (starting the cluster again if something stopped it)."""
        if not self.running():
            self.start()
        name = f"faults_{uuid.uuid4().hex[:10]}"
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def kill_connections(self, url: str) -> int:
        """Terminate every connection to ``url``'s database (as a restart or a proxy would)."""
        from helpers import terminate_backends

        return terminate_backends(self.admin(), url.rsplit("/", 1)[1])

    def stop(self) -> None:
        """Stop the server now (``-m fast``: clients are disconnected, as in a crash or reboot)."""
        _ctl("stop", self.name, "-m", "fast")

    def start(self) -> None:
        _ctl("start", self.name)

    def running(self) -> bool:
        result = subprocess.run(["pg_ctlcluster", VERSION, self.name, "status"], capture_output=True)
        return result.returncode == 0


def _ctl(action: str, name: str, *extra: str) -> None:
    subprocess.run(["pg_ctlcluster", VERSION, name, action, *extra], check=True, capture_output=True, timeout=60)


def _drop(name: str) -> None:
    subprocess.run(["pg_dropcluster", "--stop", VERSION, name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Cluster]:
    """A running throw-away cluster for this test module; each test makes its own database."""
    if os.geteuid() != 0 or shutil.which("pg_createcluster") is None:
        pytest.skip("needs root and pg_createcluster to run a throw-away PostgreSQL cluster")
    name = f"tuner_faults_{PORT}"
    _drop(name)  # a leftover of an interrupted run
    subprocess.run(
        [
            "pg_createcluster",
            VERSION,
            name,
            "--port",
            str(PORT),
            "-o",
            "fsync=off",
            "-o",
            "synchronous_commit=off",
            "-o",
            "full_page_writes=off",
            "-o",
            "max_connections=100",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        hba = Path(f"/etc/postgresql/{VERSION}/{name}/pg_hba.conf")
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        _ctl("start", name)
        yield Cluster(name, PORT)
    finally:
        _drop(name)


@pytest.fixture
def cluster_url(pg_cluster: Cluster) -> str:
    """A fresh database on the throw-away cluster (away from the shared server's connection limit)."""
    return pg_cluster.new_database()
