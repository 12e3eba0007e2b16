"""Least privilege on PostgreSQL: an owner, a worker and a viewer role for the study database.

Nothing but ``tuner db init`` / ``tuner create`` changes the schema, so only the **owner** may:
it owns Optuna's tables and may create more (an Optuna upgrade). **Workers** read and write
Optuna's rows (trials, values, attributes, heartbeats; sequences for new ids) and take advisory
locks, which every role may; they cannot create, drop or alter anything, or delete rows. The
**viewer** (dashboard, ``status``, ``report``) only reads. No role is a superuser or may create
roles or databases, so none can run ``COPY ... TO PROGRAM`` or read server files; connecting to
the study database is revoked from ``PUBLIC``, so other roles of the cluster cannot.

:func:`privilege_statements` is the SQL, also printed in docs/roles.md for servers where a DBA
runs it by hand; :func:`create_roles` runs it (``tuner db init --roles``, as a superuser or a role
with CREATEROLE that owns the database).
"""

from __future__ import annotations

import sqlalchemy
from sqlalchemy.engine import make_url

from storage.errors import StorageError
from storage.schema import connection_error, init_schema, short_engine
from storage.url import mask_url

OWNER = "tuner_owner"
WORKER = "tuner_worker"
VIEWER = "tuner_viewer"
ROLES = (OWNER, WORKER, VIEWER)
#: The password file of each role for ``tuner db init --roles`` (Docker secrets in compose).
PASSWORD_FILE_ENV = {
    OWNER: "TUNER_OWNER_PASSWORD_FILE",
    WORKER: "TUNER_WORKER_PASSWORD_FILE",
    VIEWER: "TUNER_VIEWER_PASSWORD_FILE",
}
_ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def role_statements() -> list[str]:
    """``CREATE ROLE`` for the three roles (cluster-wide; passwords are set apart)."""
    return [f"CREATE ROLE {role} {_ROLE_OPTIONS}" for role in ROLES]


def privilege_statements(database: str) -> list[str]:
    """What each role may do in ``database``; run in that database, after the roles exist.

    Safe to repeat. Grants on tables that exist now, plus default privileges for the tables the
    owner creates later, so the order against ``tuner db init`` does not matter.
    """
    db = _ident(database)
    readers = f"{OWNER}, {WORKER}, {VIEWER}"
    return [
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {db} TO {readers}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE, CREATE ON SCHEMA public TO {OWNER}",
        f"GRANT USAGE ON SCHEMA public TO {WORKER}, {VIEWER}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE ON TABLES TO {WORKER}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {WORKER}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public GRANT SELECT ON TABLES TO {VIEWER}",
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {WORKER}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {WORKER}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {VIEWER}",
    ]


def create_roles(url: str, passwords: dict[str, str]) -> str:
    """Create or update the three roles, give the owner Optuna's schema, grant the rest.

    ``url`` names the study database and a role that may create roles (the server's superuser in
    compose). Passwords are sent as SCRAM verifiers computed here, so no log line holds one.
    Returns the schema revision.

    Raises:
        StorageError: unreachable database, or the role may not create roles.
    """
    database = make_url(url).database or ""
    engine = short_engine(url)
    try:
        with engine.begin() as conn:
            existing = set(
                conn.execute(
                    sqlalchemy.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"), {"names": list(ROLES)}
                ).scalars()
            )
            for role, statement in zip(ROLES, role_statements(), strict=False):
                if role not in existing:
                    conn.exec_driver_sql(statement)
                verifier = _literal(_verifier(conn, role, passwords[role]))
                conn.exec_driver_sql(f"ALTER ROLE {role} {_ROLE_OPTIONS} PASSWORD {verifier}")
            for statement in privilege_statements(database)[:5]:  # database and schema; tables below
                conn.exec_driver_sql(statement)
    except sqlalchemy.exc.ProgrammingError as exc:  # insufficient_privilege and friends
        raise StorageError(
            f"cannot create the roles in {mask_url(url)}: {_first_line(exc)} "
            "(connect as the server's superuser or a role with CREATEROLE)"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise connection_error(exc, url) from None
    finally:
        engine.dispose()
    revision = init_schema(url, session_role=OWNER)  # new tables are the owner's
    engine = short_engine(url)
    try:
        with engine.begin() as conn:
            for (table,) in conn.execute(
                sqlalchemy.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> :owner"),
                {"owner": OWNER},
            ):
                # Tables made before the roles existed (by the superuser): the owner's from now on.
                conn.exec_driver_sql(f"ALTER TABLE public.{_ident(table)} OWNER TO {OWNER}")
            for statement in privilege_statements(database)[5:]:
                conn.exec_driver_sql(statement)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise connection_error(exc, url) from None
    finally:
        engine.dispose()
    return revision


def can_write(url: str) -> bool:
    """Whether the URL's role may write trials (the dashboard is read-only otherwise)."""
    if make_url(url).get_backend_name() != "postgresql":
        return True
    engine = short_engine(url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.execute(sqlalchemy.text("SELECT has_table_privilege('public.trials', 'INSERT')")).scalar_one()
            )
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise connection_error(exc, url) from None
    finally:
        engine.dispose()


def _verifier(conn: sqlalchemy.Connection, role: str, password: str) -> str:
    """libpq's SCRAM-SHA-256 verifier of ``password`` (what ``\\password`` in psql sends)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None, "an open connection"
    if hasattr(raw, "pgconn"):  # psycopg 3
        return raw.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    import psycopg2.extensions

    return psycopg2.extensions.encrypt_password(password, role, raw, "scram-sha-256")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: sqlalchemy.exc.SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0] if lines else type(original).__name__
