"""A trial budget shared by every worker of a study.

``Study.optimize(n_trials=...)`` counts per process; a team wants "50 trials in total, however
many workers join". Counting the study's trials and taking a slot (a queued trial, or a new
RUNNING one with its first heartbeat) happen under one named database lock, so workers racing for
the last slot create exactly one trial. Everything else ``Study.ask`` does (building the
``optuna.Trial``, the sampler's ``before_trial``, and later the sampling itself) runs after the
lock is released: the lock is the one thing all workers queue for, so it is held only for the
few statements that decide the budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
import contextlib

import optuna
from optuna.trial import TrialState

from contract import report
from contract.study_spec import StudySpec
import storage
from storage.counts import count_trials, waiting_trial_ids
from storage.locks import HeldLock, named_lock
from storage.retry import with_db_retry
from storage.session import on_connection

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
            grace period). The slot was taken in the lock's transaction, which the server rolled
            back with it, so no trial is left behind (were only the commit's reply lost, the trial
            would exist without an owner and go stale like any orphan).
    """
    with budget_lock(study, rdb, url, on_wait=on_wait, on_log=on_log):
        trial_id, queued, counts = _reserve(study, rdb, n_trials)
    if trial_id is None:
        return None, counts
    # The slot is taken (committed): a connection lost while loading the trial retries the load,
    # never the reservation, which would take a second slot and orphan this one.
    grace = float(rdb.grace_period or StudySpec.grace_period)
    trial = with_db_retry(lambda: _trial(study, trial_id, queued=queued), what="loading the trial just taken",
                          max_wait_s=grace)
    return trial, counts


def _reserve(
    study: optuna.Study, rdb: optuna.storages.RDBStorage, n_trials: int,
) -> tuple[int | None, bool, Counter[TrialState]]:
    """Under the budget lock: settle dead workers' trials, count, take a slot.

    Returns the trial id (``None``: the budget is spent), whether it was a queued trial, the counts.
    """
    storage.adopt_orphans(rdb, study._study_id)
    storage.fail_stale_trials(study, explain=why_stale)
    counts = count_trials(rdb, study.study_name, study._study_id)
    allocated = sum(counts[state] for state in ALLOCATED)
    # Study.ask's own order: a queued trial first (it holds its slot already), else a new one.
    trial_id = _pop_waiting(study, rdb) if counts[TrialState.WAITING] else None
    queued = trial_id is not None
    if trial_id is None:
        if allocated >= n_trials:
            return None, False, counts
        trial_id = study._storage.create_new_trial(study._study_id)
    # The first beat, in the same transaction: a trial is never RUNNING without one (see
    # storage.adopt_orphans); both become visible together when the lock is released.
    storage.first_heartbeat(rdb, trial_id)
    return trial_id, queued, counts


def why_stale(trial: optuna.trial.FrozenTrial, silent_s: float) -> dict[str, str]:
    """The ``error`` a trial failed for lack of heartbeats carries: for how long, and whose it was."""
    who = report.worker_of(trial)
    silence = f"{silent_s:.0f}s" if silent_s == silent_s else "longer than the grace period"  # NaN: unknown
    return {report.ERROR: f"no heartbeat for {silence}; worker {who['host'] or '?'}:{who['pid'] or '?'}"}


def _pop_waiting(study: optuna.Study, rdb: optuna.storages.RDBStorage) -> int | None:
    """Optuna's ``Study._pop_waiting_trial_id``, reading the queue from the table (see waiting_trial_ids)."""
    for trial_id in waiting_trial_ids(rdb, study._study_id):
        try:
            if study._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _trial(study: optuna.Study, trial_id: int, *, queued: bool) -> optuna.Trial:
    """The rest of Optuna 5's ``Study.ask`` for a trial already taken (outside the lock).

    ``optuna.Trial`` loads the trial, runs the sampler's ``before_trial`` and picks up an
    enqueued trial's fixed params; relative sampling happens lazily at the first ``suggest``.
    ``Study.ask``'s heartbeat hint is not raised here: we beat ourselves (storage.Heartbeat).
    """
    study._thread_local.cached_all_trials = None  # as Study.ask: sync with the storage once per trial
    if queued:  # Study.ask's pop read the queue through Optuna's trial cache; a trial must be in it
        study._storage.get_all_trials(study._study_id, deepcopy=False, states=())
    return optuna.Trial(study, trial_id)


@contextlib.contextmanager
def budget_lock(
    study: optuna.Study, rdb: optuna.storages.RDBStorage, url: str,
    *, on_wait: Callable[[float], None] | None = None, on_log: Callable[[str], None] | None = None,
) -> Iterator[HeldLock]:
    """The lock under which a study's trials are counted and their states change budget-wise.

    Asking, and failing a trial together with queueing its retry, both hold it: a worker counting
    in between would otherwise see a slot free and overrun the budget.
    A holder that stops for the grace period (frozen, cut off) loses the lock to the server, like
    a trial that stops beating loses its slot; a waiter gives up after twice that plus a minute.
    This thread's calls on ``rdb`` run on the lock's own connection, in its transaction
    (:func:`storage.session.on_connection`): one connection per worker, and a section that takes
    effect whole or not at all.
    """
    grace = rdb.grace_period if rdb.heartbeat_interval else None
    with named_lock(
        url, f"mars-tuner:budget:{study.study_name}", engine=rdb.engine,
        hold_timeout_s=grace, max_wait_s=None if grace is None else 2 * grace + 60,
        on_wait=on_wait, on_log=on_log,
    ) as held:
        if held.connection is None:  # SQLite: a file lock; calls go through the pool as usual
            yield held
            return
        with on_connection(rdb, held.connection):
            yield held
