"""A trial budget shared by every worker of a study.

``Study.optimize(n_trials=...)`` counts per process; a team wants "50 trials in total, however
many workers join". Counting the study's trials and asking for a new one happen under one named
database lock, so workers racing for the last slot create exactly one trial.
"""

from __future__ import annotations

from collections import Counter
import contextlib
import warnings

import optuna
from optuna.trial import TrialState

import storage
from storage.counts import count_trials
from storage.locks import named_lock

ALLOCATED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def ask_within_budget(
    study: optuna.Study, rdb: optuna.storages.RDBStorage, url: str, n_trials: int
) -> tuple[optuna.Trial | None, Counter[TrialState]]:
    """Return a new (or queued) trial if the budget allows, else ``None``; plus the counts.

    Stale trials of dead workers are failed first (their retries are queued as WAITING), and
    trials left without any heartbeat are adopted so that they go stale too. A WAITING trial is
    always handed out: it already holds a budget slot. The new trial has its first heartbeat.
    """
    with budget_lock(study, rdb, url):
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


def budget_lock(
    study: optuna.Study, rdb: optuna.storages.RDBStorage, url: str
) -> contextlib.AbstractContextManager[None]:
    """The lock under which a study's trials are counted and their states change budget-wise.

    Asking, and failing a trial together with queueing its retry, both hold it: a worker counting
    in between would otherwise see a slot free and overrun the budget.
    """
    return named_lock(url, f"mars-tuner:budget:{study.study_name}", engine=rdb.engine)
