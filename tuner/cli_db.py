"""``tuner db``: check or initialise the study database (and, on PostgreSQL, its roles)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contract.options import StorageOpt
from contract.options import fail as _fail

db_app = typer.Typer(help="Check or initialise the study database.", no_args_is_help=True)


@db_app.command("check")
def db_check(storage: StorageOpt = None) -> None:
    """Check that the database is reachable and its schema matches this Optuna.

    Exits 0 when usable, 1 otherwise. Passwords are never printed.
    """
    from storage import check, resolve_url

    health = check(resolve_url(storage))
    typer.echo(f"storage:  {health.url}")
    if not health.reachable:
        raise _fail(health.error or "database not reachable")
    typer.echo(f"server:   {health.server_version or '-'}")
    typer.echo(f"schema:   {health.schema_revision or 'none'} (this Optuna: {health.head_revision})")
    if health.n_studies is not None:
        typer.echo(f"studies:  {health.n_studies}")
    if not health.ok:
        raise _fail(health.error or "database not usable")
    typer.echo("ok")


def _role_password_option(role: str) -> typer.models.OptionInfo:
    return typer.Option(
        f"--{role}-password-file",
        envvar=f"TUNER_{role.upper()}_PASSWORD_FILE",
        show_envvar=True,
        metavar="FILE",
        help=f"With --roles: the password of the tuner_{role} role.",
    )


@db_app.command("init")
def db_init(
    storage: StorageOpt = None,
    roles: Annotated[
        bool,
        typer.Option(
            "--roles",
            help="PostgreSQL, as a superuser: also create or update the owner, worker "
            "and viewer roles (docs/roles.md); the tables become the owner's.",
        ),
    ] = False,
    owner_password_file: Annotated[Path | None, _role_password_option("owner")] = None,
    worker_password_file: Annotated[Path | None, _role_password_option("worker")] = None,
    viewer_password_file: Annotated[Path | None, _role_password_option("viewer")] = None,
) -> None:
    """Create Optuna's schema once (safe to run concurrently and repeatedly).

    Workers never create tables; run this (or `tuner create`) before starting them.
    """
    from storage import init_schema, mask_url, resolve_url

    url = resolve_url(storage)
    if not roles:
        revision = init_schema(url)
        typer.echo(f"schema {revision} ready in {mask_url(url)}")
        return
    from sqlalchemy.engine import make_url

    from storage.roles import OWNER, PASSWORD_FILE_ENV, ROLES, VIEWER, WORKER, create_roles
    from storage.url import read_password_file

    if make_url(url).get_backend_name() != "postgresql":
        raise _fail("--roles needs PostgreSQL: SQLite has no roles")
    files = {OWNER: owner_password_file, WORKER: worker_password_file, VIEWER: viewer_password_file}
    passwords = {}
    for role in ROLES:
        if files[role] is None:
            raise _fail(f"--roles needs {PASSWORD_FILE_ENV[role]} (or --{role.split('_')[1]}-password-file)")
        passwords[role] = read_password_file(files[role], PASSWORD_FILE_ENV[role])
    revision = create_roles(url, passwords)
    typer.echo(f"roles {', '.join(ROLES)} ready; schema {revision} owned by {OWNER} in {mask_url(url)}")
