"""Count a study's trials per state with one query.

Optuna's ``get_n_trials`` loads every trial with its params and attributes; a worker checks the
shared budget before each trial, and at thousands of trials that load would dominate. This reads
Optuna's ``trials`` table directly: a GROUP BY on an indexed column.
"""

from __future__ import annotations

from collections import Counter

from optuna.storages import RDBStorage
from optuna.trial import TrialState
import sqlalchemy

from storage.session import read

_QUERY = sqlalchemy.text("SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state")
_WAITING = sqlalchemy.text("SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING' ORDER BY number")


def count_trials(storage: RDBStorage, study_name: str, study_id: int | None = None) -> Counter[TrialState]:
    """Trials of ``study_name`` per :class:`TrialState` (absent states count 0).

    ``study_id``, when the caller knows it, saves looking the name up.
    """
    if study_id is None:
        study_id = storage.get_study_id_from_name(study_name)
    rows = read(storage, _QUERY, {"sid": study_id})  # under the budget lock: its transaction
    return Counter({TrialState[str(state).split(".")[-1]]: int(n) for state, n in rows})


def waiting_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """Ids of the study's queued (WAITING) trials, oldest first, as ``Study.ask`` would pop them.

    Read from the table, not Optuna's trial cache: under the budget lock that cache could hold
    what a rolled-back section once wrote, and syncing it there would keep the lock longer.
    """
    return [int(row[0]) for row in read(storage, _WAITING, {"sid": study_id})]
