"""The one door to Optuna's internals: every private attribute of Optuna's objects this project
touches, and every statement it runs on Optuna's own tables that is not a read.

Optuna has no public way to get a study's row id, a trial's id, the storage a ``Study`` wraps,
to drop a ``Study``'s per-thread trial cache the way ``Study.ask`` does, to list stale trials,
or to rename a study. The project needs each of them (the shared budget, heartbeats, atomic
study creation, bulk readers keyed by id), so they live here, named and typed, and nowhere else:
``tests/test_layers.py`` fails when ``_storage``, ``_study_id``, ``_thread_local``,
``_trial_id``, or an import from a private Optuna module appears outside ``storage/``. An
Optuna upgrade re-checks this module (and the plain-SQL readers beside it: ``counts``,
``summaries``, ``heartbeat``, ``session``), not three packages. Tested with the Optuna version DEVELOPERS.md names.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy


def study_id(study: optuna.Study) -> int:
    """The study's row id (``studies.study_id``), which Optuna keeps as ``Study._study_id``."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's row id (``trials.trial_id``), which Optuna keeps as ``_trial_id``."""
    return trial._trial_id


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a ``Study`` calls: an ``RDBStorage`` under Optuna's caching wrapper, or as given."""
    return study._storage


def backend_of(study: optuna.Study) -> BaseStorage:
    """The storage under Optuna's caching wrapper (``_CachedStorage._backend``), or the storage itself."""
    wrapped = study._storage
    return getattr(wrapped, "_backend", wrapped)


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """The RUNNING trials whose heartbeat is older than the grace period, as Optuna's own check reads them."""
    return list(study._storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]


def new_trial(study: optuna.Study) -> int:
    """A new RUNNING trial of ``study``, created through the study's storage as ``Study.ask`` does."""
    return study._storage.create_new_trial(study._study_id)


def claim_waiting(study: optuna.Study, waiting_id: int) -> bool:
    """Set a WAITING trial RUNNING as ``Study._pop_waiting_trial_id`` does; ``False``: another worker was first.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial is finished already.
    """
    return study._storage.set_trial_state_values(waiting_id, state=TrialState.RUNNING)


def forget_cached_trials(study: optuna.Study, *, reload: bool = False) -> None:
    """Drop this thread's cached trials of ``study``, as ``Study.ask`` does before it builds a trial.

    ``reload``: read every trial through the study's storage again (filling Optuna's trial cache),
    as ``Study.ask``'s pop of a queued trial would have.
    """
    study._thread_local.cached_all_trials = None
    if reload:
        study._storage.get_all_trials(study._study_id, deepcopy=False, states=())


def grpc_proxy_server(storage: BaseStorage, host: str, port: int) -> Any:
    """Optuna's gRPC storage proxy as a server object to start and stop (``run_grpc_proxy_server``
    only blocks); from the private module ``optuna.storages._grpc.server``, for bench/."""
    from optuna.storages._grpc.server import make_server

    return make_server(storage, host, port)


def delete_study(rdb: RDBStorage, name: str) -> None:
    """Delete the study called ``name`` with all its trials; nothing if there is none.

    ``RDBStorage.delete_study`` deletes the children through the ORM and swallows an
    ``IntegrityError`` (logged at debug level): a worker that inserts a row (an epoch's report)
    between the ORM's read of a trial's children and its delete left the whole study in place,
    silently, and ``tuner create --overwrite`` then failed. Here the study's row and its trials'
    rows are locked first (``FOR UPDATE``: a child row's foreign-key check waits for it), so the
    ORM deletes everything Optuna's own delete would, and a writer that waited fails after.
    """
    from optuna.storages._rdb import models  # Optuna's ORM: its cascades are the schema's truth

    session = rdb.scoped_session()
    try:
        lock = session.bind is not None and session.bind.dialect.name != "sqlite"  # SQLite: one writer anyway
        row = session.execute(
            _with_lock(sqlalchemy.select(models.StudyModel.study_id).where(models.StudyModel.study_name == name), lock)
        ).first()
        if row is not None:
            session.execute(
                _with_lock(
                    sqlalchemy.select(models.TrialModel.trial_id).where(models.TrialModel.study_id == row[0]), lock
                )
            ).all()
            session.delete(session.get(models.StudyModel, row[0]))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _with_lock(select: sqlalchemy.Select, lock: bool) -> sqlalchemy.Select:
    return select.with_for_update() if lock else select


def rename_study(rdb: RDBStorage, study_row_id: int, name: str) -> None:
    """Give a study another name in one statement (Optuna has no rename)."""
    with rdb.engine.begin() as conn:
        conn.execute(
            sqlalchemy.text("UPDATE studies SET study_name = :name WHERE study_id = :id"),
            {"name": name, "id": study_row_id},
        )


__all__ = [
    "backend_of",
    "claim_waiting",
    "delete_study",
    "forget_cached_trials",
    "grpc_proxy_server",
    "new_trial",
    "rename_study",
    "stale_trial_ids",
    "study_id",
    "study_storage",
    "trial_id",
]
