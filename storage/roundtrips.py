"""Fewer round trips per trial: what a worker pays per statement on a slow link.

Over a VPN every round trip costs the link's latency. Optuna makes each storage call its own
transaction on a pooled connection: a pre-ping (``SELECT 1``), ``BEGIN``, a read of the trial
(is it still updatable?), the write, ``COMMIT``: five round trips to set one user attribute, and
a trial sets a dozen (config, worker, provenance, phase, result fields). At 100 ms that was
about 24 s per trial (tests/test_network.py). Two changes, both for PostgreSQL only:

* :class:`LeanRDBStorage` sets a trial attribute in one autocommitted statement that also checks
  the trial's state (``INSERT ... SELECT ... WHERE state IN ('RUNNING', 'WAITING') ON CONFLICT``),
  or, inside the budget lock's routed transaction (storage.session), one statement in it;
* :func:`ping_when_idle`: the pool pings a connection only if it has been idle for
  :data:`PING_AFTER_IDLE_S` (a database restart while it sat in the pool), not on every checkout.
  A connection killed in the last seconds fails its first statement, which SQLAlchemy marks as a
  disconnect and the callers retry (storage.retry, the heartbeat's next beat) on a new one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from optuna.storages import RDBStorage
import sqlalchemy

from storage.session import routed_connection

PING_AFTER_IDLE_S = 2.0

_UPSERT = (
    "INSERT INTO {table} (trial_id, key, value_json) "
    "SELECT trial_id, :key, :value FROM trials WHERE trial_id = :tid AND state IN ('RUNNING', 'WAITING') "
    "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json"
)
_USER = sqlalchemy.text(_UPSERT.format(table="trial_user_attributes"))
_SYSTEM = sqlalchemy.text(_UPSERT.format(table="trial_system_attributes"))


class LeanRDBStorage(RDBStorage):
    """``RDBStorage`` whose trial-attribute writes are one round trip on PostgreSQL."""

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._one_statement(_USER, trial_id, key, value):
            super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._one_statement(_SYSTEM, trial_id, key, value):
            super().set_trial_system_attr(trial_id, key, value)

    def _one_statement(self, statement: sqlalchemy.TextClause, trial_id: int, key: str, value: Any) -> bool:
        """Write it in one statement; ``False``: not PostgreSQL, or the trial is not updatable
        (Optuna's own call then raises the error it always raised)."""
        if self.engine.dialect.name != "postgresql":
            return False
        params = {"tid": trial_id, "key": key, "value": json.dumps(value)}
        conn = routed_connection()
        if conn is not None:
            return conn.execute(statement, params).rowcount == 1
        with self.engine.connect() as conn:
            # The driver's own autocommit, not SQLAlchemy's isolation level: resetting that on
            # return to the pool is one more statement (SET default_transaction_isolation).
            raw: Any = conn.connection.dbapi_connection
            raw.autocommit = True
            try:
                return conn.execute(statement, params).rowcount == 1
            finally:
                raw.autocommit = False


def ping_when_idle(engine: sqlalchemy.Engine) -> None:
    """Ping a pooled connection at checkout only after :data:`PING_AFTER_IDLE_S` in the pool."""

    @sqlalchemy.event.listens_for(engine.pool, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["returned_at"] = time.monotonic()

    @sqlalchemy.event.listens_for(engine.pool, "checkout")
    def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_S:
            return
        autocommit = dbapi_connection.autocommit
        try:
            dbapi_connection.autocommit = True  # a bare SELECT 1: no BEGIN, nothing to end
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.autocommit = autocommit
        except Exception as exc:  # noqa: BLE001 - any failure: the pool opens a new connection
            raise sqlalchemy.exc.DisconnectionError(str(exc)) from exc


__all__ = ["LeanRDBStorage", "PING_AFTER_IDLE_S", "ping_when_idle"]
