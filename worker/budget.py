"""A trial budget shared by every worker of a study.

``Study.optimize(n_trials=...)`` counts per process; a team wants "50 trials in total, however
many workers join". Counting the study's trials and asking for a new one happen under one named
database lock, so workers racing for the last slot create exactly one trial.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
import contextlib
import warnings

import optuna
from optuna.trial import TrialState

import storage
from storage.counts import count_trials
from storage.locks import HeldLock, LockLost, named_lock

ALLOCATED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def ask_within_budget(
    study: optuna.Study, rdb: optuna.storages.RDBStorage, url: str, n_trials: int,
    *, on_wait: Callable[[float], None] | None = None, on_log: Callable[[str], None] | None = None,
) -> tuple[optuna.Trial | None, Counter[TrialState]]:
    """Return a new (or queued) trial if the budget allows, else ``None``; plus the counts.

    Stale trials of dead workers are failed first (their retries are queued as WAITING), and
    trials left without any heartbeat are adopted so that they go stale too. A WAITING trial is
    always handed out: it already holds a budget slot. The new trial has its first heartbeat.
    ``on_wait`` / ``on_log``: see :func:`storage.locks.named_lock` (interrupt / report the wait).

    Raises:
        storage.locks.LockLost: the lock was taken back meanwhile (this process froze past the
            grace period); a trial asked for is failed at once, as it may be one too many.
    """
    trial = None
    try:
        with budget_lock(study, rdb, url, on_wait=on_wait, on_log=on_log):
            storage.adopt_orphans(rdb, study._study_id)
            storage.fail_stale_trials(study)
            counts = count_trials(rdb, study.study_name)
            allocated = sum(counts[state] for state in ALLOCATED)
            if counts[TrialState.WAITING] or allocated < n_trials:
                with warnings.catch_warnings():
                    # We run heartbeats ourselves (storage.Heartbeat); Optuna's hint is for optimize().
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                    trial = study.ask()
                # The first beat, still under the lock: a trial is never RUNNING without one for
                # longer than this section (see storage.adopt_orphans).
                rdb.record_heartbeat(trial._trial_id)
                return trial, counts
            return None, counts
    except LockLost:
        if trial is not None:  # FAIL does not count against the budget
            study.tell(trial, state=TrialState.FAIL)
        raise


def budget_lock(
    study: optuna.Study, rdb: optuna.storages.RDBStorage, url: str,
    *, on_wait: Callable[[float], None] | None = None, on_log: Callable[[str], None] | None = None,
) -> contextlib.AbstractContextManager[HeldLock]:
    """The lock under which a study's trials are counted and their states change budget-wise.

    Asking, and failing a trial together with queueing its retry, both hold it: a worker counting
    in between would otherwise see a slot free and overrun the budget.
    A holder that stops for the grace period (frozen, cut off) loses the lock to the server, like
    a trial that stops beating loses its slot; a waiter gives up after twice that plus a minute.
    """
    grace = rdb.grace_period if rdb.heartbeat_interval else None
    return named_lock(
        url, f"mars-tuner:budget:{study.study_name}", engine=rdb.engine,
        hold_timeout_s=grace, max_wait_s=None if grace is None else 2 * grace + 60,
        on_wait=on_wait, on_log=on_log,
    )
