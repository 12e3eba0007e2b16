"""What the test modules share: the installed CLIs as real processes, and the one-line-error check.

Tests that only check arguments and error lines use Typer's ``CliRunner`` in-process; these run the
console scripts as a user does, for tests that need a real process (signals, exit codes, stderr).
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys
from typing import Any

#: The venv's ``bin`` directory holding the ``tuner`` and ``worker`` console scripts.
BIN = Path(sys.executable).parent


def run_cli(
    tool: str,
    *args: str,
    env: dict[str, str | None] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``tool`` (``tuner`` or ``worker``) to completion; ``env`` adds to ours (None removes)."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={k: v for k, v in merged.items() if v is not None},
    )


def invoke(app: Any, *args: object, env: dict[str, str | None] | None = None) -> Any:
    """Run a Typer ``app`` in-process with Typer's ``CliRunner`` (each argument as ``str``); ``env``
    is set for the call (None removes). The click group catches errors as for a user."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_error_line(output: str, exit_code: int, *, expected: int = 1) -> str:
    """Assert the project's error contract (one ``error:`` line, no traceback) and return the line."""
    assert exit_code == expected, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def terminate_backends(admin_conn, database: str) -> int:  # noqa: ANN001 - a psycopg2 connection
    """Terminate every server connection to ``database`` (as a restart would); how many there were.

    ``admin_conn`` is an autocommit connection to another database of the same server; it is
    closed afterwards.
    """
    with admin_conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        killed = cur.fetchone()[0]
    admin_conn.close()
    return killed


def one_cli_error(result: Any, *needles: str) -> str:
    """The same contract for an in-process ``CliRunner`` result: exit 1, a single short
    ``error:`` line on stderr that contains every needle; returns the line."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[:2000]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0][:400]
    return lines[0]


def lose_first_reply(study: Any) -> list[bool]:
    """Make ``study.tell`` commit, then fail once as if the connection died before the reply
    came back (later calls pass through); returns a list that holds ``True`` once it happened."""
    import sqlalchemy

    real, lost = study.tell, []

    def tell(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not lost:
            lost.append(True)
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return result

    study.tell = tell
    return lost
