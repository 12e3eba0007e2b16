"""Heartbeats for trials run with ask/tell.

Optuna records heartbeats only inside ``Study.optimize``. Our workers use ask/tell (they must
report per-class IoU and provenance and handle signals themselves), so this thread does what
``optimize`` would: record a heartbeat every ``interval`` seconds until the trial ends. A failed
beat (database restarting) is logged and retried at the next tick instead of killing training:
the grace period is there to absorb short outages.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
import warnings

import optuna
from optuna.storages import RDBStorage
import sqlalchemy

from storage.session import read

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
            self._thread = threading.Thread(
                target=self._run, name=f"heartbeat-{self._trial_id}", daemon=True
            )
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
            _logger.warning("heartbeat for %s failed: %s", self._label, type(exc).__name__)


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


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail RUNNING trials whose worker stopped beating, and queue their retries.

    Optuna's ``optimize`` does this before every trial; ask/tell workers call this before every
    ``ask`` so that a dead worker's trial does not linger as RUNNING (with the constant liar, a
    RUNNING trial repels new suggestions). Staleness is judged by the database clock.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
