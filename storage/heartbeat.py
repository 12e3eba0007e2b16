"""Heartbeats for trials run with ask/tell.

Optuna records heartbeats only inside ``Study.optimize``. Our workers use ask/tell (they must
report per-class IoU and provenance and handle signals themselves), so this thread does what
``optimize`` would: record a heartbeat every ``interval`` seconds until the trial ends. A failed
beat (database restarting) is logged and retried at the next tick instead of killing training:
the grace period is there to absorb short outages.
"""

from __future__ import annotations

from collections.abc import Callable
import copy
import datetime
import logging
import math
import threading
from types import TracebackType
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy

from storage.optuna_internals import backend_of, stale_trial_ids, study_id, study_storage
from storage.retry import describe
from storage.session import read, routed_connection

_logger = logging.getLogger(__name__)


class Heartbeat:
    """Context manager: ``with Heartbeat(storage, trial_id): train()``."""

    def __init__(
        self, storage: RDBStorage, trial_id: int, interval: float | None = None, *, number: int | None = None
    ) -> None:
        self._storage = storage
        self._trial_id = trial_id
        # Users know trials by number (status, dashboard); the id is only the database's key.
        self._label = f"trial {number}" if number is not None else f"trial id {trial_id}"
        self._interval = float(interval or storage.get_heartbeat_interval() or 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0
        self.failures = 0

    def __enter__(self) -> Heartbeat:
        if self._interval > 0:
            self._beat()  # the first beat before training starts: the trial is visibly alive
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self._trial_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self._storage.record_heartbeat(self._trial_id)
            self.beats += 1
        except Exception as exc:  # noqa: BLE001 - any DB error must not kill the trial
            self.failures += 1
            _logger.warning("heartbeat for %s failed: %s", self._label, describe(exc))


_ORPHANS = sqlalchemy.text(
    "SELECT t.trial_id, t.number FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :sid AND t.state = 'RUNNING' AND h.trial_id IS NULL"
)


def adopt_orphans(storage: RDBStorage, study_id: int) -> list[int]:
    """Give a first heartbeat to RUNNING trials that have none; return their ids.

    Optuna never fails a RUNNING trial without a heartbeat row, so a worker that died (or lost
    its connection) between ``ask`` and its first beat would leave a trial RUNNING forever, and
    a shared budget would wait for it forever. Call this under the budget lock, where every
    worker records its trial's first beat right after asking: a beat-less trial seen there has
    no live owner. Its adopted beat is stamped by the database clock and is never renewed, so the
    ordinary stale-trial check fails it (and queues its retry) after the grace period; an owner
    that is alive after all simply keeps beating it.
    """
    rows = [(int(row[0]), int(row[1])) for row in read(storage, _ORPHANS, {"sid": study_id})]
    for trial_id, number in rows:
        storage.record_heartbeat(trial_id)  # Optuna ignores the duplicate if its owner beat first
        _logger.warning("trial %d had no heartbeat (its worker died right after asking); adopted", number)
    return [trial_id for trial_id, _ in rows]


def first_heartbeat(storage: RDBStorage, trial_id: int) -> None:
    """A trial's first beat, as it is taken under the budget lock.

    On the lock's PostgreSQL connection it is one statement; Optuna's ``record_heartbeat`` reads
    the row through its ORM first, in a savepoint of its own: three round trips more in the one
    section every worker queues for.
    """
    conn = routed_connection()
    if conn is None or conn.dialect.name != "postgresql":
        storage.record_heartbeat(trial_id)
        return
    conn.execute(_FIRST_BEAT, {"tid": trial_id})


_FIRST_BEAT = sqlalchemy.text(
    "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:tid, CURRENT_TIMESTAMP) "
    "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = EXCLUDED.heartbeat"
)


def fail_stale_trials(
    study: optuna.Study,
    *,
    explain: Callable[[FrozenTrial, float], dict[str, Any]] | None = None,
) -> None:
    """Fail RUNNING trials whose worker stopped beating, and queue their retries.

    Optuna's ``optimize`` does this before every trial; ask/tell workers call this before every
    ``ask`` so that a dead worker's trial does not linger as RUNNING (with the constant liar, a
    RUNNING trial repels new suggestions). Staleness is judged by the database clock.

    Optuna's check loads every RUNNING trial of the study (one per busy worker) as ORM objects;
    under the budget lock that was the slowest step. One plain query first says whether any beat
    is stale at all, which it rarely is; only then are they failed, as Optuna's
    ``fail_stale_trials`` does, except that ``explain(trial, seconds without a beat)`` gives user
    attributes to write first (why the trial failed: the storage layer does not know the names
    the worker's readers use). The retry the storage's callback queues does not inherit them.
    """
    rdb = backend_of(study)  # under Optuna's caching wrapper
    if not isinstance(rdb, RDBStorage) or not rdb.heartbeat_interval:
        return  # no heartbeats: nothing goes stale
    if not _any_stale(rdb, study_id(study)):
        return
    backend = study_storage(study)  # through the caching wrapper, as Optuna's own check goes
    failed: list[int] = []
    explained: set[str] = set()
    for trial_id in stale_trial_ids(study):
        try:
            if explain is not None:
                for key, value in explain(backend.get_trial(trial_id), _silence_s(rdb, trial_id)).items():
                    backend.set_trial_user_attr(trial_id, key, value)
                    explained.add(key)
            if backend.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
    callback = rdb.get_heartbeat_stale_trial_callback()
    for trial_id in failed if callback is not None else []:
        trial = copy.deepcopy(backend.get_trial(trial_id))
        for key in explained:
            trial.user_attrs.pop(key, None)
        callback(study, trial)  # type: ignore[misc]


_LAST_BEAT = sqlalchemy.text("SELECT heartbeat, CURRENT_TIMESTAMP FROM trial_heartbeats WHERE trial_id = :tid")


def _silence_s(rdb: RDBStorage, trial_id: int) -> float:
    """Seconds since the trial's last heartbeat, by the database clock (as staleness is judged)."""
    for beat, now in read(rdb, _LAST_BEAT, {"tid": trial_id}):
        try:
            beat, now = (datetime.datetime.fromisoformat(v) if isinstance(v, str) else v for v in (beat, now))
            return max(0.0, (now.replace(tzinfo=None) - beat.replace(tzinfo=None)).total_seconds())
        except (TypeError, ValueError, AttributeError):
            break
    return math.nan


_BEATS = sqlalchemy.text(
    "SELECT h.heartbeat, CURRENT_TIMESTAMP FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :sid AND t.state = 'RUNNING'"
)


def _any_stale(rdb: RDBStorage, study_id: int) -> bool:
    """Whether a RUNNING trial's last beat is older than the grace period (as Optuna judges it).

    Like Optuna, the database's ``now`` loses its time zone without conversion: both it and the
    beats are the server's wall clock. A value that does not parse counts as stale (Optuna decides).
    """
    grace = datetime.timedelta(seconds=rdb.grace_period or 2 * (rdb.heartbeat_interval or 0))
    for beat, now in read(rdb, _BEATS, {"sid": study_id}):
        try:
            beat, now = (datetime.datetime.fromisoformat(v) if isinstance(v, str) else v for v in (beat, now))
            if now.replace(tzinfo=None) - beat.replace(tzinfo=None) > grace:
                return True
        except (TypeError, ValueError, AttributeError):
            return True
    return False
