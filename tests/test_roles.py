"""Least privilege on PostgreSQL, over TLS: ``tuner db init --roles`` and what each role may do.

A throw-away cluster (tests/pgcluster.py's tools, port ``TEST_PG_FAULT_PORT``) that accepts TCP
only with TLS and SCRAM passwords, with a CA and server certificate made here by openssl, so
every connection of these tests is ``sslmode=verify-full``, as docs/roles.md tells team machines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
import dataclasses
import os
from pathlib import Path
import shutil
import subprocess
import sys
import uuid

from helpers import one_error_line, run_cli, tiny_space
from pgcluster import PORT, VERSION, _ctl, _drop
import psycopg2
import pytest

from storage.roles import OWNER, PASSWORD_FILE_ENV, ROLES, VIEWER, WORKER, privilege_statements, role_statements

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.npz(32, seed=1)
NAME = f"tuner_roles_{PORT}"


@dataclasses.dataclass
class TlsCluster:
    port: int
    ca: Path
    secrets: Path

    def url(self, role: str, database: str, *, ca: Path | None = None) -> str:
        return f"postgresql://{role}@localhost:{self.port}/{database}?sslmode=verify-full&sslrootcert={ca or self.ca}"

    def connect(self, role: str, database: str) -> psycopg2.extensions.connection:
        password = None if role == "postgres" else (self.secrets / role).read_text().strip()
        conn = psycopg2.connect(
            host="localhost",
            port=self.port,
            user=role,
            password=password,
            dbname=database,
            sslmode="verify-full",
            sslrootcert=str(self.ca),
            connect_timeout=5,
        )
        conn.autocommit = True
        return conn

    def env(self, role: str) -> dict[str, str]:
        """What a process of ``role`` gets: the password as a file, as compose gives it."""
        return {"TUNER_DB_PASSWORD_FILE": str(self.secrets / role), "TUNER_STORAGE": None}  # type: ignore[dict-item]


def _certificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for localhost / 127.0.0.1."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=mars-tuner test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"
    )
    (where / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    )
    return where / "ca.crt", where / "server.crt", where / "server.key"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory) -> Iterator[TlsCluster]:
    if os.geteuid() != 0 or shutil.which("pg_createcluster") is None or shutil.which("openssl") is None:
        pytest.skip("needs root, pg_createcluster and openssl for a throw-away TLS cluster")
    _drop(NAME)
    subprocess.run(
        ["pg_createcluster", VERSION, NAME, "--port", str(PORT), "-o", "fsync=off", "-o", "max_connections=60"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        conf = Path(f"/etc/postgresql/{VERSION}/{NAME}")
        ca, cert, key = _certificates(tmp_path_factory.mktemp("tls"))
        for source in (cert, key):
            shutil.copy(source, conf / source.name)
            shutil.chown(conf / source.name, "postgres", "postgres")
        (conf / "server.key").chmod(0o600)
        with (conf / "postgresql.conf").open("a") as handle:
            handle.write(
                f"ssl = on\nssl_cert_file = '{conf / 'server.crt'}'\nssl_key_file = '{conf / 'server.key'}'\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        (conf / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all postgres 127.0.0.1/32 trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 reject\n"  # no plain TCP at all
        )
        _ctl("start", NAME)
        secrets = tmp_path_factory.mktemp("secrets")
        for role in (*ROLES, "postgres"):
            (secrets / role).write_text(uuid.uuid4().hex + "\n")
            (secrets / role).chmod(0o600)
        yield TlsCluster(PORT, ca, secrets)
    finally:
        _drop(NAME)
        shutil.rmtree(f"/etc/postgresql/{VERSION}/{NAME}", ignore_errors=True)  # what pg_dropcluster leaves


@pytest.fixture(scope="module")
def study_db(tls_cluster, npz, tmp_path_factory) -> str:
    """A database set up as compose does it: roles by the superuser, the study by the owner."""
    database = f"roles_{uuid.uuid4().hex[:8]}"
    admin = tls_cluster.connect("postgres", "postgres")
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    admin.close()
    env = {"TUNER_DB_PASSWORD_FILE": None, **{PASSWORD_FILE_ENV[r]: str(tls_cluster.secrets / r) for r in ROLES}}
    result = run_cli("tuner", "db", "init", "--roles", "--storage", tls_cluster.url("postgres", database), env=env)
    assert result.returncode == 0, result.stderr
    space = tiny_space(tmp_path_factory.mktemp("space") / "space.yaml", epochs=1)
    result = run_cli(
        "tuner",
        "create",
        "s",
        "--data",
        str(npz),
        "--space",
        str(space),
        "--trials",
        "2",
        "--pruner",
        "none",
        "--storage",
        tls_cluster.url(OWNER, database),
        env=tls_cluster.env(OWNER),
    )
    assert result.returncode == 0, result.stderr
    return database


def _in_child(code: str, url: str, **env: str) -> str:
    """Run ``code`` with ``url`` as argv[1] in a fresh interpreter; its stdout.

    A psycopg 3 TLS connection from the suite's own process, after other tests loaded
    TensorFlow's and psycopg2's OpenSSL builds, aborts the interpreter; a worker or a
    dashboard process never holds both, so the child is what users run.
    """
    child_env = {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "TUNER_DB_PASSWORD_FILE")}
    done = subprocess.run(
        [sys.executable, "-c", code, url],
        env={**child_env, **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def _refused(conn, statement: str) -> str:
    with pytest.raises(psycopg2.Error) as info:
        conn.cursor().execute(statement)
    return info.value.pgcode or ""


INSUFFICIENT_PRIVILEGE = "42501"


@pytest.mark.slow
def test_worker_role_cannot_change_the_schema_run_programs_or_read_elsewhere(tls_cluster, study_db):
    admin = tls_cluster.connect("postgres", "postgres")
    other = f"other_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{other}"')
    admin.close()
    other_admin = tls_cluster.connect("postgres", other)
    other_admin.cursor().execute("CREATE TABLE secret (x text); INSERT INTO secret VALUES ('payroll')")
    other_admin.close()

    worker = tls_cluster.connect(WORKER, study_db)
    cur = worker.cursor()
    cur.execute("SELECT count(*) FROM trials")  # it reads and writes Optuna's rows...
    cur.execute("SELECT pg_advisory_lock(42), pg_advisory_unlock(42)")  # ...and takes advisory locks
    for statement in (
        "CREATE TABLE evil (x int)",
        "CREATE TEMP TABLE evil (x int)",
        "DROP TABLE trials",
        "ALTER TABLE trials ADD COLUMN evil int",
        "TRUNCATE trials",
        "DELETE FROM studies",
        "CREATE SCHEMA evil",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY trials FROM '/etc/passwd'",
        "SELECT pg_read_file('/etc/passwd')",
        "CREATE ROLE evil",
        "ALTER ROLE tuner_worker SUPERUSER",
    ):
        assert _refused(worker, statement) == INSUFFICIENT_PRIVILEGE, statement
    worker.close()
    elsewhere = tls_cluster.connect(WORKER, other)
    assert _refused(elsewhere, "SELECT * FROM secret") == INSUFFICIENT_PRIVILEGE
    elsewhere.close()

    viewer = tls_cluster.connect(VIEWER, study_db)
    viewer.cursor().execute("SELECT count(*) FROM trials")
    assert _refused(viewer, "UPDATE studies SET study_name = 'x'") == INSUFFICIENT_PRIVILEGE
    viewer.close()
    owner = tls_cluster.connect(OWNER, study_db)
    assert _refused(owner, "COPY (SELECT 1) TO PROGRAM 'id'") == INSUFFICIENT_PRIVILEGE
    owner.close()
    # Another role of the cluster cannot even connect to the study database.
    admin = tls_cluster.connect("postgres", "postgres")
    admin.cursor().execute("DROP ROLE IF EXISTS stranger; CREATE ROLE stranger LOGIN PASSWORD 'stranger'")
    admin.close()
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        psycopg2.connect(
            host="localhost",
            port=tls_cluster.port,
            user="stranger",
            password="stranger",
            dbname=study_db,
            sslmode="verify-full",
            sslrootcert=str(tls_cluster.ca),
            connect_timeout=5,
        )


@pytest.mark.slow
def test_a_whole_search_runs_under_the_worker_role_with_verify_full_tls(tls_cluster, study_db, npz):
    url = tls_cluster.url(WORKER, study_db)
    result = run_cli(
        "worker",
        "run",
        "--study",
        "s",
        "--data",
        str(npz),
        "--quiet",
        "--storage",
        url,
        env=tls_cluster.env(WORKER),
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    read = (
        "import optuna,sys; s=optuna.storages.RDBStorage(sys.argv[1], skip_compatibility_check=True, "
        "skip_table_creation=True); print(','.join(t.state.name for t in "
        "optuna.load_study(study_name='s', storage=s).get_trials(deepcopy=False)))"
    )
    states = _in_child(read, tls_cluster.url("postgres", study_db))
    assert states.strip() == "COMPLETE,COMPLETE", states
    # Viewers read it; the same worker with a CA that did not sign the server's certificate is refused.
    status = run_cli(
        "tuner", "status", "s", "--storage", tls_cluster.url(VIEWER, study_db), env=tls_cluster.env(VIEWER)
    )
    assert status.returncode == 0 and "COMPLETE" in status.stdout.upper(), status.stderr
    wrong_ca = tls_cluster.ca.with_name("other-ca.crt")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", wrong_ca)
    refused = run_cli(
        "worker",
        "run",
        "--study",
        "s",
        "--data",
        str(npz),
        "--storage",
        tls_cluster.url(WORKER, study_db, ca=wrong_ca),
        env=tls_cluster.env(WORKER),
        timeout=300,
    )
    assert "certificate verify failed" in one_error_line(refused.stdout + refused.stderr, refused.returncode)


_DASHBOARD_CALLS = """
import sys
from wsgiref.util import setup_testing_defaults
from tuner.dashboard import make_app
app = make_app(sys.argv[1])
for method, path in (("GET", "/api/studies"), ("DELETE", "/api/studies/1")):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path}
    setup_testing_defaults(environ)
    got = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: got.append(status)))
    print(repr((got[0], body)))
"""


@pytest.mark.slow
def test_dashboard_as_viewer_refuses_writes_with_a_reason(tls_cluster, study_db):
    # In a child process, for the reason in _in_child.
    out = _in_child(
        _DASHBOARD_CALLS, tls_cluster.url(VIEWER, study_db), TUNER_DB_PASSWORD_FILE=str(tls_cluster.secrets / VIEWER)
    )
    (get_status, get_body), (delete_status, delete_body) = (ast.literal_eval(line) for line in out.splitlines())
    assert get_status.startswith("200") and b'"s"' in get_body
    assert delete_status.startswith("403") and b"read-only" in delete_body and b"DASHBOARD_ROLE" in delete_body


def test_documented_role_sql_is_what_db_init_runs():
    docs = (ROOT / "docs" / "roles.md").read_text()
    for statement in (*role_statements(), *privilege_statements("optuna")):
        assert statement.replace('"optuna"', "optuna") + ";" in docs, statement


def test_db_init_roles_needs_postgresql_and_the_three_password_files(tuner_home, tmp_path):
    from helpers import one_cli_error
    from typer.testing import CliRunner

    from tuner.cli import app

    sqlite = f"sqlite:///{tmp_path / 'x.db'}"
    one_cli_error(CliRunner().invoke(app, ["db", "init", "--roles", "--storage", sqlite]), "needs PostgreSQL")
    assert not (tmp_path / "x.db").exists()
    unset = {name: None for name in PASSWORD_FILE_ENV.values()}
    result = CliRunner().invoke(app, ["db", "init", "--roles", "--storage", "postgresql://u@127.0.0.1:1/d"], env=unset)
    one_cli_error(result, "TUNER_OWNER_PASSWORD_FILE")


@pytest.mark.slow
def test_db_init_roles_as_a_role_that_may_not_create_roles_is_one_line(tls_cluster, study_db):
    env = {
        "TUNER_DB_PASSWORD_FILE": str(tls_cluster.secrets / WORKER),
        **{PASSWORD_FILE_ENV[r]: str(tls_cluster.secrets / r) for r in ROLES},
    }
    result = run_cli("tuner", "db", "init", "--roles", "--storage", tls_cluster.url(WORKER, study_db), env=env)
    line = one_error_line(result.stderr, result.returncode)
    assert "cannot create the roles" in line and "superuser" in line, line
    for role in ROLES:
        assert (tls_cluster.secrets / role).read_text().strip() not in result.stdout + result.stderr
