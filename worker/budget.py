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
import dataclasses

import optuna
from optuna.trial import TrialState

from contract import trial_attrs
from contract.study_spec import StudySpec
import storage
from storage.budget_lock import budget_lock as storage_budget_lock
from storage.counts import count_trials_apart, waiting_trial_ids
from storage.locks import HeldLock
from storage.optuna_internals import claim_waiting, forget_cached_trials, new_trial, study_id
from storage.retry import with_db_retry

ALLOCATED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclasses.dataclass(frozen=True)
class Counts:
    """A study's trials per state, apart: the search's, and ``tuner confirm``'s re-runs.

    Indexing gives the total of both (``counts[TrialState.RUNNING]``: every running trial, any
    of which may die and need a worker for its retry).
    """

    search: Counter[TrialState]
    confirming: Counter[TrialState]

    def __getitem__(self, state: TrialState) -> int:
        return self.search[state] + self.confirming[state]


def ask_within_budget(
    study: optuna.Study,
    rdb: optuna.storages.RDBStorage,
    url: str,
    n_trials: int,
    *,
    on_wait: Callable[[float], None] | None = None,
    on_log: Callable[[str], None] | None = None,
) -> tuple[optuna.Trial | None, Counts]:
    """Return a new (or queued) trial if the budget allows, else ``None``; plus the counts.

    Stale trials of dead workers are failed first (their retries are queued as WAITING), and
    trials left without any heartbeat are adopted so that they go stale too. A WAITING trial is
    always handed out: a search trial's retry already holds a budget slot, and a ``tuner
    confirm`` trial (marked :data:`contract.trial_attrs.CONFIRMS`) needs none: only search trials
    count towards ``n_trials``, so the search ends with exactly ``n_trials`` however many
    confirmations are queued. The new trial has its first heartbeat.
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
    trial = with_db_retry(
        lambda: _trial(study, trial_id, queued=queued), what="loading the trial just taken", max_wait_s=grace
    )
    return trial, counts


def _reserve(
    study: optuna.Study,
    rdb: optuna.storages.RDBStorage,
    n_trials: int,
) -> tuple[int | None, bool, Counts]:
    """Under the budget lock: settle dead workers' trials, count, take a slot.

    Returns the trial id (``None``: the budget is spent), whether it was a queued trial, the counts.
    """
    storage.adopt_orphans(rdb, study_id(study))
    storage.fail_stale_trials(study, explain=why_stale)
    counts = Counts(*count_trials_apart(rdb, study_id(study), trial_attrs.CONFIRMS))
    allocated = sum(counts.search[state] for state in ALLOCATED)
    # Study.ask's own order: a queued trial first (it holds its slot already), else a new one.
    trial_id = _pop_waiting(study, rdb) if counts[TrialState.WAITING] else None
    queued = trial_id is not None
    if trial_id is None:
        if allocated >= n_trials:
            return None, False, counts
        trial_id = new_trial(study)
    # The first beat, in the same transaction: a trial is never RUNNING without one (see
    # storage.adopt_orphans); both become visible together when the lock is released.
    storage.first_heartbeat(rdb, trial_id)
    return trial_id, queued, counts


def why_stale(trial: optuna.trial.FrozenTrial, silent_s: float) -> dict[str, str]:
    """The ``error`` a trial failed for lack of heartbeats carries: for how long, and whose it was."""
    who = trial_attrs.worker_of(trial)
    silence = f"{silent_s:.0f}s" if silent_s == silent_s else "longer than the grace period"  # NaN: unknown
    return {trial_attrs.ERROR: f"no heartbeat for {silence}; worker {who['host'] or '?'}:{who['pid'] or '?'}"}


def _pop_waiting(study: optuna.Study, rdb: optuna.storages.RDBStorage) -> int | None:
    """Optuna's ``Study._pop_waiting_trial_id``, reading the queue from the table (see waiting_trial_ids)."""
    for trial_id in waiting_trial_ids(rdb, study_id(study)):
        try:
            if claim_waiting(study, trial_id):
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
    # As Study.ask: sync with the storage once per trial. Study.ask's pop read the queue through
    # Optuna's trial cache, so a queued trial must be in it.
    forget_cached_trials(study, reload=queued)
    return optuna.Trial(study, trial_id)


@contextlib.contextmanager
def budget_lock(
    study: optuna.Study,
    rdb: optuna.storages.RDBStorage,
    url: str,
    *,
    on_wait: Callable[[float], None] | None = None,
    on_log: Callable[[str], None] | None = None,
) -> Iterator[HeldLock]:
    """The lock under which a study's trials are counted and their states change budget-wise.

    Asking, and failing a trial together with queueing its retry, both hold it: a worker counting
    in between would otherwise see a slot free and overrun the budget. ``tuner confirm`` holds
    the same lock to queue its trials (see :func:`storage.budget_lock.budget_lock`).
    """
    with storage_budget_lock(rdb, url, study.study_name, on_wait=on_wait, on_log=on_log) as held:
        yield held
