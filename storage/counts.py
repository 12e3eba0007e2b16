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

_QUERY = sqlalchemy.text("SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state")


def count_trials(storage: RDBStorage, study_name: str) -> Counter[TrialState]:
    """Trials of ``study_name`` per :class:`TrialState` (absent states count 0)."""
    study_id = storage.get_study_id_from_name(study_name)
    with storage.engine.connect() as conn:
        rows = conn.execute(_QUERY, {"sid": study_id}).all()
    return Counter({TrialState[str(state).split(".")[-1]]: int(n) for state, n in rows})
