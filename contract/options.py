"""Command-line options the ``tuner`` and ``worker`` CLIs share.

One definition each, so a flag and its environment variable mean the same thing everywhere
(the compose files and the docs rely on that), and one way to fail with a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from contract.errors import TunerError

StorageOpt = Annotated[
    Optional[str],
    typer.Option(
        "--storage", envvar="TUNER_STORAGE", show_envvar=True,
        help="Database URL, e.g. postgresql://user@host:5432/optuna. Default: SQLite in ./.tuner.",
    ),
]
ArtifactDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--artifact-dir", envvar="TUNER_ARTIFACT_DIR", show_envvar=True,
        help="Artifact store directory: workers upload each new best model there; export and dashboard read it.",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


class CliGroup(TyperGroup):
    """The click group of both CLIs: the one place a :class:`TunerError` becomes ``error: ...``.

    Catching here rather than in ``Typer.__call__`` means Typer's ``CliRunner`` in the tests sees
    exactly what a user sees.
    """

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except TunerError as exc:
            raise fail(str(exc)) from None
