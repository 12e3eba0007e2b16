"""A trial budget shared by every worker of a study.

``Study.optimize(n_trials=...)`` counts per process; a team wants "50 trials in total, however
many workers join". Counting the study's trials and asking for a new one happen under one named
database lock, so workers racing for the last slot create exactly one trial.
"""

from __future__ import annotations

from collections import Counter
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

    Stale trials of dead workers are failed first (their retries are queued as WAITING). A
    WAITING trial is always handed out: it already holds a budget slot.
    """
    with named_lock(url, f"mars-tuner:budget:{study.study_name}", engine=rdb.engine):
        storage.fail_stale_trials(study)
        counts = count_trials(rdb, study.study_name)
        allocated = sum(counts[state] for state in ALLOCATED)
        if counts[TrialState.WAITING] or allocated < n_trials:
            with warnings.catch_warnings():
                # We run heartbeats ourselves (storage.Heartbeat); Optuna's hint is for optimize().
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                return study.ask(), counts
        return None, counts
