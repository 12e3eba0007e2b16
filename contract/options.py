"""Command-line options the ``tuner`` and ``worker`` CLIs share.

One definition each, so a flag and its environment variable mean the same thing everywhere
(the compose files and the docs rely on that), and one way to fail with a one-line error.
"""

from __future__ import annotations

import atexit
import gc
from pathlib import Path
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from contract.errors import TunerError

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="TUNER_STORAGE",
        show_envvar=True,
        help="Database URL, e.g. postgresql://user@host:5432/optuna. Default: SQLite in ./.tuner.",
    ),
]
ArtifactDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifact-dir",
        envvar="TUNER_ARTIFACT_DIR",
        show_envvar=True,
        help="Artifact store directory: workers upload each new best model there; export and dashboard read it.",
    ),
]


def _skip_final_collection() -> None:
    """At exit, leave the objects to the operating system instead of collecting them one by one.

    A CLI process ends right after its command; the interpreter's last cyclic collection then
    walks every object the command made (0.2-0.3 s after ``tuner report`` of 5,000 trials).
    """
    gc.freeze()


atexit.register(_skip_final_collection)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


class CliGroup(TyperGroup):
    """The click group of both CLIs: the one place a :class:`TunerError` becomes ``error: ...``.

    Catching here rather than in ``Typer.__call__`` means Typer's ``CliRunner`` in the tests sees
    exactly what a user sees. Usage errors (unknown option, bad choice) get the same one line,
    with click's exit code 2, instead of a usage box.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]  # *args holds no flag
        except typer.TyperException as exc:  # click's ClickException and its usage errors
            if not standalone_mode:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # `tuner` alone: the help is the answer
                exc.show()  # type: ignore[attr-defined]  # click's NoArgsIsHelpError
                sys.exit(0)
            ctx = getattr(exc, "ctx", None)  # usage errors carry the command's context
            command = f" (see `{ctx.command_path} --help`)" if ctx else ""
            message = exc.format_message().replace("Value error, ", "")
            typer.secho(f"error: {message}{command}", fg=typer.colors.RED, err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.secho("error: aborted", fg=typer.colors.RED, err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except TunerError as exc:
            raise fail(str(exc)) from None
