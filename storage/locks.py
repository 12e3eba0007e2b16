"""Cross-process, cross-machine named locks on the study database.

Used where Optuna itself has no transaction that spans what we need: creating the schema, and
"count the study's trials, then ask for one more" so that workers on many machines never overrun
a shared trial budget. PostgreSQL gives advisory locks; for the embedded SQLite file a ``flock``
on a sibling file does the same on one machine.

The PostgreSQL lock is a *transaction* advisory lock on a connection kept idle in its transaction
while the holder works, so the server itself takes it back from a holder that stops: a killed
worker's connection closes; a frozen one (SIGSTOP, paused VM) or one cut off by a network
partition goes past ``idle_in_transaction_session_timeout`` (``hold_timeout_s``) and the server
ends its session; TCP keepalives catch a dead peer. Waiting happens in the server's lock queue, so
a released lock passes to the next waiter at once, but in short tries (``lock_timeout``, growing
from :data:`POLL_FIRST_S` to :data:`POLL_MAX_S`), each its own transaction: the wait is bounded
(``max_wait_s``), reported (``on_log``, every :data:`LOG_EVERY_S` seconds, naming the holder) and
interruptible (``on_wait`` may raise, and Python signal handlers run between tries), and the
holder's transaction (whose ``now()`` stamps heartbeats) starts at most one try before it got the
lock. A holder that works longer than ``hold_timeout_s`` calls ``check()`` on what the ``with`` gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import fcntl
import hashlib
import logging
from pathlib import Path
import time

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage import engine as engine_settings
from storage.errors import StorageError
from storage.retry import DatabaseUnavailable

_logger = logging.getLogger(__name__)

POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5
LOG_FIRST_S = 5.0
LOG_EVERY_S = 10.0
# Server-side keepalives on the lock's connection: a holder whose machine vanished is noticed
# within about idle + interval * count seconds even while no statement runs.
# The same values as every connection's (storage.engine), which a pooler may not pass on.
KEEPALIVES = {
    "tcp_keepalives_idle": str(engine_settings.KEEPALIVES_IDLE_S),
    "tcp_keepalives_interval": str(engine_settings.KEEPALIVES_INTERVAL_S),
    "tcp_keepalives_count": str(engine_settings.KEEPALIVES_COUNT),
    "tcp_user_timeout": str(engine_settings.TCP_USER_TIMEOUT_MS),  # unacknowledged data: a blackhole
}
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait


class HeldLock:
    """What ``with named_lock(...) as held`` gives: a way for a long holder to prove it lives."""

    def __init__(self, conn: sqlalchemy.Connection | None, name: str) -> None:
        self._conn = conn
        self.name = name

    @property
    def connection(self) -> sqlalchemy.Connection | None:
        """The connection whose transaction holds the lock (``None`` for a file lock)."""
        return self._conn

    def check(self) -> None:
        """Touch the lock's connection (resetting the server's idle timer); raise if it is lost.

        Raises:
            LockLost: the server ended the session, so the lock is no longer held.
        """
        if self._conn is None:
            return
        try:
            self._conn.execute(sqlalchemy.text("SELECT 1"))
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError):
            raise LockLost(f"lost the lock {self.name!r}: its database connection ended") from None


class LockTimeout(StorageError):
    """Waited ``max_wait_s`` for a lock without getting it."""


class LockLost(StorageError, DatabaseUnavailable):
    """The connection that held the lock died before the holder released it.

    The server released the lock then, so another process may have entered meanwhile: whatever
    the holder did under the lock since is no longer protected by it.
    """


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def named_lock(
    url: str,
    name: str,
    engine: sqlalchemy.Engine | None = None,
    *,
    hold_timeout_s: float | None = None,
    max_wait_s: float | None = None,
    on_wait: Callable[[float], None] | None = None,
    on_log: Callable[[str], None] | None = None,
) -> Iterator[HeldLock]:
    """Hold the lock ``name`` on the database at ``url`` for the ``with`` block.

    Args:
        engine: an engine to borrow a connection from (a worker's pooled engine); without it a
            throw-away connection is opened.
        hold_timeout_s: the server ends the holder's session (releasing the lock) when the holder
            issues nothing on it for this long; ``None``: no limit.
        max_wait_s: give up waiting after this long (:class:`LockTimeout`); ``None``: wait.
        on_wait: called with the seconds waited after each failed try; raise to stop waiting.
        on_log: receives a line after :data:`LOG_FIRST_S` seconds of waiting and every
            :data:`LOG_EVERY_S` seconds after that (default: log it).

    Yields:
        a :class:`HeldLock`, whose ``check()`` a long holder calls to keep the lock.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
        LockTimeout: ``max_wait_s`` passed.
        LockLost: the lock's connection died while the block ran (raised after the block).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with _file_lock(parsed.database or "", name):
            yield HeldLock(None, name)
        return
    owned = engine is None
    if engine is None:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    key = lock_key(name)
    settings = dict(KEEPALIVES)  # transaction-local: the pool gets the connection back clean
    if hold_timeout_s is not None:
        settings["idle_in_transaction_session_timeout"] = str(max(1, int(hold_timeout_s * 1000)))
    try:
        with engine.connect() as conn:
            _acquire(conn, key, name, settings, max_wait_s, on_wait, on_log or _logger.warning)
            try:
                yield HeldLock(conn, name)
            except BaseException:
                _release(conn, name, quiet=True)
                raise
            _release(conn, name, quiet=False)
    finally:
        if owned:
            engine.dispose()


def _acquire(
    conn: sqlalchemy.Connection,
    key: int,
    name: str,
    settings: dict[str, str],
    max_wait_s: float | None,
    on_wait: Callable[[float], None] | None,
    on_log: Callable[[str], None],
) -> None:
    """Take the lock in the transaction ``conn`` is left in; each try is one round trip.

    The try's short ``lock_timeout`` is put back once the lock is held (the inner select runs
    first, left to right): the holder's own statements wait for row locks as long as any other.
    """
    calls = ", ".join(f"set_config('{setting}', :v{i}, true)" for i, setting in enumerate(settings))
    statement = sqlalchemy.text(
        "SELECT set_config('lock_timeout', t.before, true) FROM ("
        f"SELECT current_setting('lock_timeout') AS before, {calls}, "
        "set_config('lock_timeout', :wait, true), pg_advisory_xact_lock(:k) OFFSET 0) AS t"
    )
    params: dict[str, object] = {f"v{i}": value for i, value in enumerate(settings.values())}
    start = time.monotonic()
    next_log = start + LOG_FIRST_S
    wait = POLL_FIRST_S
    while True:
        try:
            conn.execute(statement, {**params, "wait": f"{max(1, int(wait * 1000))}ms", "k": key})
            return
        except sqlalchemy.exc.OperationalError as exc:
            if _sqlstate(exc.orig) != LOCK_NOT_AVAILABLE:
                raise
        conn.rollback()
        now = time.monotonic()
        waited = now - start
        if max_wait_s is not None and waited >= max_wait_s:
            raise LockTimeout(f"waited {waited:.0f}s for the lock {name!r} ({holder(conn, key)}); giving up")
        if now >= next_log:
            on_log(f"waiting {waited:.0f}s for the lock {name!r} ({holder(conn, key)})")
            next_log = now + LOG_EVERY_S
            conn.rollback()  # the next try starts a fresh transaction
        if on_wait is not None:
            on_wait(waited)
        wait = min(wait * 2, POLL_MAX_S)


def _sqlstate(error: BaseException | None) -> str | None:
    """The server's error code: ``sqlstate`` in psycopg 3 (what ``postgresql://`` means),
    ``pgcode`` in psycopg2."""
    return getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)


_HOLDER = sqlalchemy.text(
    "SELECT a.application_name, a.pid, extract(epoch FROM now() - a.xact_start) "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1"
)


def holder(conn: sqlalchemy.Connection, key: int) -> str:
    """Who holds advisory lock ``key``, for a waiting message (best effort)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(_HOLDER, {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).first()
    except sqlalchemy.exc.SQLAlchemyError:
        return "holder unknown"
    if row is None:
        return "holder just released it"
    app, pid, age = row
    held = f" for {float(age):.0f}s" if age is not None else ""
    return f"held by {app or 'an unnamed client'} (server pid {pid}){held}"


def _release(conn: sqlalchemy.Connection, name: str, *, quiet: bool) -> None:
    """End the lock's transaction, which releases it; report a connection that died meanwhile.

    A dead connection means the server released the lock already, possibly while the block still
    ran: :class:`LockLost` tells the caller (unless the block failed anyway, ``quiet``).
    """
    try:
        conn.commit()
    except (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.PendingRollbackError,
    ) as exc:  # the last: it died under a routed session
        # Close the connection for good rather than return it to the pool: if the session is
        # somehow still alive, closing it is what releases its lock.
        conn.invalidate()
        _logger.debug("lock %r: connection lost before release (%s)", name, type(exc).__name__)
        if not quiet:
            raise LockLost(f"lost the lock {name!r}: its database connection ended while it was held") from None


@contextlib.contextmanager
def _file_lock(database: str, name: str) -> Iterator[None]:
    if database in ("", ":memory:"):
        yield
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = hashlib.sha256(name.encode()).hexdigest()[:12]
    with open(path.with_name(f"{path.name}.{suffix}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
