"""What the test modules share: the installed CLIs as real processes or in-process, the one-line-error
check, and the tiny search space that the tests' real workers train.

Tests that only check arguments and error lines use Typer's ``CliRunner`` in-process (``invoke``);
``run_cli`` runs the console scripts as a user does, for tests that need a real process (signals,
exit codes, stderr).
"""

from __future__ import annotations

from collections.abc import Callable
import os
from pathlib import Path
import subprocess
import sys
import time
from typing import Any

import yaml

#: The venv's ``bin`` directory holding the ``tuner`` and ``worker`` console scripts.
BIN = Path(sys.executable).parent

#: What the tests' real workers search: tiny models (base filters 4) that cost a few seconds of CPU
#: a trial, most of it graph tracing. Modules set ``epochs`` (see :func:`tiny_space`).
TINY_SPACE: dict[str, dict[str, Any]] = {
    "fixed": {
        "model": "multipath",
        "depth": 2,
        "base_filters": 4,
        "conventional_filters": 8,
        "residual_filters": 4,
        "multiscale_filters": 8,
        "context_filters": 4,
        "batch_size": 16,
        "augment_flips": False,
        "validation_fraction": 0.25,
        "early_stopping_patience": 5,
        "reduce_lr_patience": 5,
        "batchnorm_momentum": 0.9,
    },
    "params": {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "focal_gamma": {"type": "float", "low": 0.0, "high": 2.0},
    },
}

#: The tiny space's learning rate alone (``params`` of :func:`tiny_space`).
LEARNING_RATE_ONLY = {"learning_rate": TINY_SPACE["params"]["learning_rate"]}


def tiny_space_dict(*, params: dict[str, Any] | None = None, **fixed: Any) -> dict[str, Any]:
    """:data:`TINY_SPACE` with ``fixed`` setting fixed values and ``params`` replacing the searched
    ones (a fixed value they search is dropped)."""
    params = TINY_SPACE["params"] if params is None else params
    values = {k: v for k, v in {**TINY_SPACE["fixed"], **fixed}.items() if k not in params}
    return {"fixed": values, "params": params}


def tiny_space(path: Path, *, params: dict[str, Any] | None = None, **fixed: Any) -> Path:
    """Write :func:`tiny_space_dict` to ``path`` as YAML and return ``path``."""
    path.write_text(yaml.safe_dump(tiny_space_dict(params=params, **fixed)))
    return path


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
        [str(BIN / tool), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
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


def study_trials(url: str, study: str = "s") -> list[Any]:
    """The study's trials (``FrozenTrial``), read through a storage opened for the call and closed."""
    import optuna

    import storage

    rdb = storage.open_storage(url, heartbeat_interval=None)
    try:
        return optuna.load_study(study_name=study, storage=rdb).get_trials(deepcopy=False)
    finally:
        rdb.engine.dispose()


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    poll: float = 0.3,
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``predicate`` until it holds; after ``timeout`` seconds fail, naming ``what`` (and ``detail()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    more = detail()
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{more}" if more else ""))
