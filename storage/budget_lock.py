"""The one lock under which a study's trials are counted and queued budget-wise.

Workers take it to ask for a trial and to fail-and-requeue one (``worker/budget.py``); the
coordinator takes it to enqueue ``tuner confirm``'s trials, so that two coordinators (or one run
twice at once) cannot both see a seed missing and both queue it. One name per study, defined here
so that both sides lock the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib

from optuna.storages import RDBStorage

from storage.locks import HeldLock, named_lock
from storage.session import on_connection


def budget_lock_name(study_name: str) -> str:
    return f"mars-tuner:budget:{study_name}"


@contextlib.contextmanager
def budget_lock(
    rdb: RDBStorage,
    url: str,
    study_name: str,
    *,
    grace_period: float | None = None,
    on_wait: Callable[[float], None] | None = None,
    on_log: Callable[[str], None] | None = None,
) -> Iterator[HeldLock]:
    """Hold the study's budget lock; this thread's calls on ``rdb`` run in its transaction.

    A holder that stops for ``grace_period`` seconds (frozen, cut off) loses the lock to the
    server, like a trial that stops beating loses its slot; a waiter gives up after twice that
    plus a minute. ``None``: the storage's own grace period if it beats, else no limits.
    This thread's calls on ``rdb`` run on the lock's own connection, in its transaction
    (:func:`storage.session.on_connection`): one connection per process, and a section that
    takes effect whole or not at all.
    """
    if grace_period is None and rdb.heartbeat_interval:
        grace_period = rdb.grace_period
    with named_lock(
        url,
        budget_lock_name(study_name),
        engine=rdb.engine,
        hold_timeout_s=grace_period,
        max_wait_s=None if grace_period is None else 2 * grace_period + 60,
        on_wait=on_wait,
        on_log=on_log,
    ) as held:
        if held.connection is None:  # SQLite: a file lock; calls go through the pool as usual
            yield held
            return
        with on_connection(rdb, held.connection):
            yield held
