"""Count a study's trials per state with one query.

Optuna's ``get_n_trials`` loads every trial with its params and attributes; a worker checks the
shared budget before each trial, and at thousands of trials that load would dominate. This reads
Optuna's ``trials`` table directly: a GROUP BY on an indexed column.
"""

from __future__ import annotations

from collections import Counter
import json
from typing import Any

from optuna.storages import RDBStorage
from optuna.trial import TrialState
import sqlalchemy

from storage.session import read

_QUERY = sqlalchemy.text("SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state")
_SPLIT = sqlalchemy.text(
    "SELECT t.state, a.trial_id IS NOT NULL, count(*) FROM trials t "
    "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = :key "
    "WHERE t.study_id = :sid GROUP BY t.state, a.trial_id IS NOT NULL"
)
_PAIRS = sqlalchemy.text(
    "SELECT a.value_json, b.value_json FROM trials t "
    "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = :first "
    "JOIN trial_user_attributes b ON b.trial_id = t.trial_id AND b.key = :second "
    "WHERE t.study_id = :sid"
)
_WAITING = sqlalchemy.text("SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING' ORDER BY number")


def count_trials(storage: RDBStorage, study_name: str, study_id: int | None = None) -> Counter[TrialState]:
    """Trials of ``study_name`` per :class:`TrialState` (absent states count 0).

    ``study_id``, when the caller knows it, saves looking the name up.
    """
    if study_id is None:
        study_id = storage.get_study_id_from_name(study_name)
    rows = read(storage, _QUERY, {"sid": study_id})  # under the budget lock: its transaction
    return Counter({TrialState[str(state).split(".")[-1]]: int(n) for state, n in rows})


def count_trials_apart(
    storage: RDBStorage,
    study_id: int,
    key: str,
) -> tuple[Counter[TrialState], Counter[TrialState]]:
    """Trials per state in one query, apart: (those without user attr ``key``, those with it).

    The budget counts only trials of the search; trials marked with ``key`` (``tuner confirm``'s
    re-runs) are counted apart so that they never take a search slot. The join reads one row of
    the (trial_id, key) unique index per trial.
    """
    rows = read(storage, _SPLIT, {"sid": study_id, "key": key})
    plain: Counter[TrialState] = Counter()
    marked: Counter[TrialState] = Counter()
    for state, has_key, n in rows:
        (marked if has_key else plain)[TrialState[str(state).split(".")[-1]]] += int(n)
    return plain, marked


def user_attr_pairs(storage: RDBStorage, study_id: int, first: str, second: str) -> list[tuple[Any, Any]]:
    """(value of ``first``, value of ``second``) of every trial of the study that has both, decoded."""
    rows = read(storage, _PAIRS, {"sid": study_id, "first": first, "second": second})
    return [(json.loads(a), json.loads(b)) for a, b in rows]


def waiting_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """Ids of the study's queued (WAITING) trials, oldest first, as ``Study.ask`` would pop them.

    Read from the table, not Optuna's trial cache: under the budget lock that cache could hold
    what a rolled-back section once wrote, and syncing it there would keep the lock longer.
    """
    return [int(row[0]) for row in read(storage, _WAITING, {"sid": study_id})]
